//! Publish and subscribe authorisation over the `auth` role. The chain is the one CONNECT
//! uses (priority order, the first plugin that does not ignore decides, a failing plugin
//! denies, `auth.acl_no_match` decides when all ignore); it runs only on a miss of the
//! connection's decision cache, so the publish path costs a hash lookup. A plugin load,
//! reload or unload bumps a generation that empties every cache at its next use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use tracing::info;

use crate::auth::{AclVerdict, Identity};
use crate::broker::Broker;
use crate::config::{AuthConfig, NoMatch};

pub use crate::auth::{Action, Ask};

/// Broker-wide ACL state the plugin manager updates: read with two atomic loads per check.
#[derive(Debug, Default)]
pub struct AclShared {
    generation: AtomicU64,
    auth_plugins: AtomicUsize,
}

impl AclShared {
    /// The loaded plugin set changed: every cached decision is stale.
    pub(crate) fn plugins_changed(&self, auth_plugins: usize) {
        self.auth_plugins.store(auth_plugins, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// The chain's answer for one action.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// Who decided and by which rule (for the log).
    pub why: String,
    /// A plugin failed (a refusal, never cached: the next check asks again).
    pub failed: bool,
}

/// Runs the chain for one action (no cache).
pub async fn decide(broker: &Broker, who: &Identity, client_id: &str, ask: Ask<'_>) -> Decision {
    let m = &broker.metrics;
    let no_match = || Decision {
        allowed: broker.config().auth.acl_no_match == NoMatch::Allow,
        why: "no auth plugin decided (auth.acl_no_match)".into(),
        failed: false,
    };
    let Some(auth) = broker.auth_chain() else {
        return no_match();
    };
    for p in auth.chain() {
        let name = p.name();
        match p.authorize(who, client_id, ask).await {
            Ok(AclVerdict::Ignore) => continue,
            Ok(AclVerdict::Allow) => {
                m.acl_allowed.fetch_add(1, Ordering::Relaxed);
                return Decision {
                    allowed: true,
                    why: format!("allowed by {name}"),
                    failed: false,
                };
            }
            Ok(AclVerdict::Deny(rule)) => {
                m.acl_denied.fetch_add(1, Ordering::Relaxed);
                return Decision {
                    allowed: false,
                    why: format!("denied by {name}: {rule}"),
                    failed: false,
                };
            }
            Err(e) => {
                m.acl_failed.fetch_add(1, Ordering::Relaxed);
                m.acl_denied.fetch_add(1, Ordering::Relaxed);
                return Decision {
                    allowed: false,
                    why: format!("auth plugin {name} failed ({e}); denied"),
                    failed: true,
                };
            }
        }
    }
    let d = no_match();
    let c = if d.allowed {
        &m.acl_allowed
    } else {
        &m.acl_denied
    };
    c.fetch_add(1, Ordering::Relaxed);
    d
}

/// Decisions for one topic: a bit per (QoS, retain) pair, since a plugin may decide on
/// either.
#[derive(Debug, Clone, Copy)]
struct Entry {
    known: u8,
    allowed: u8,
    at: Instant,
}

fn bit(qos: u8, retain: bool) -> u8 {
    1 << (qos.min(2) * 2 + u8::from(retain))
}

/// One connection's ACL: its identity and its bounded decision cache. Dropped with the
/// connection, so a session's decisions never outlive it.
#[derive(Debug)]
pub(crate) struct Acl {
    who: Identity,
    generation: u64,
    max: usize,
    ttl: Duration,
    publish: HashMap<ByteString, Entry>,
    subscribe: HashMap<ByteString, Entry>,
}

impl Acl {
    pub fn new(who: Identity, cfg: &AuthConfig) -> Self {
        Self {
            who,
            generation: 0,
            max: cfg.acl_cache_max,
            ttl: Duration::from_secs(cfg.acl_cache_ttl_secs),
            publish: HashMap::new(),
            subscribe: HashMap::new(),
        }
    }

    /// Who the client is.
    pub fn identity(&self) -> &Identity {
        &self.who
    }

    /// Whether the client may do `action` on `topic`: superusers always; otherwise the
    /// cache, or the chain on a miss (a refusal is logged once, when the chain decides).
    pub async fn check(
        &mut self,
        broker: &Broker,
        client_id: &str,
        ask: Ask<'_>,
        now: Instant,
    ) -> bool {
        let Ask {
            action,
            topic,
            qos,
            retain,
        } = ask;
        if self.who.superuser {
            return true;
        }
        let shared = &broker.acl;
        if shared.auth_plugins.load(Ordering::Relaxed) == 0 {
            return broker.config().auth.acl_no_match == NoMatch::Allow;
        }
        let generation = shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.publish.clear();
            self.subscribe.clear();
            self.generation = generation;
        }
        let b = bit(qos, retain);
        let map = match action {
            Action::Publish => &mut self.publish,
            Action::Subscribe => &mut self.subscribe,
        };
        if let Some(e) = map.get(topic) {
            if e.known & b != 0 && now.duration_since(e.at) < self.ttl {
                broker
                    .metrics
                    .acl_cache_hits
                    .fetch_add(1, Ordering::Relaxed);
                return e.allowed & b != 0;
            }
        }
        // Boxed: the plugin call's future is large and rare (decisions are cached), and
        // inline it would grow every connection's task by its size.
        let d = Box::pin(decide(broker, &self.who, client_id, ask)).await;
        if !d.allowed {
            info!(
                tenant = %self.who.tenant,
                client_id,
                action = action.as_str(),
                topic,
                rule = %d.why,
                "ACL refused"
            );
        }
        if self.max > 0 && !d.failed {
            let map = match action {
                Action::Publish => &mut self.publish,
                Action::Subscribe => &mut self.subscribe,
            };
            // A full cache starts over: bounded, and cheaper than tracking recency.
            if map.len() >= self.max && !map.contains_key(topic) {
                map.clear();
            }
            let e = map.entry(ByteString::from(topic)).or_insert(Entry {
                known: 0,
                allowed: 0,
                at: now,
            });
            if now.duration_since(e.at) >= self.ttl {
                *e = Entry {
                    known: 0,
                    allowed: 0,
                    at: now,
                };
            }
            e.known |= b;
            if d.allowed {
                e.allowed |= b;
            } else {
                e.allowed &= !b;
            }
        }
        d.allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_qos_and_retain_pair_has_its_own_bit() {
        let mut seen = 0u8;
        for qos in 0..=2 {
            for retain in [false, true] {
                let b = bit(qos, retain);
                assert_eq!(b.count_ones(), 1);
                assert_eq!(seen & b, 0, "qos {qos} retain {retain} collides");
                seen |= b;
            }
        }
        assert_eq!(bit(7, false), bit(2, false), "out-of-range QoS clamps");
    }
}
