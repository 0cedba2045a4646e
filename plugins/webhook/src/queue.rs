//! One bounded queue per target in the plugin's kv store (so it survives a trap, a reload
//! and a broker restart), keyed by the target's id (a hash of its URL, so a reordered or
//! edited target list never sends one target's queue to another):
//! `q/<id>/<seq>-<nonce>` holds one request body, appended by the event pump's calls (one
//! at a time per node) and drained in order by the ticks (one at a time per node).
//! Counters: `n/<id>/<name>`, each written by one side only.

use apiary_plugin_sdk::{clock, kv, outbound};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Target;

fn get_u64(key: &str) -> u64 {
    kv::get(key)
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0)
}

fn set_u64(key: &str, n: u64) {
    let _ = kv::set(key, n.to_string().as_bytes());
}

/// Adds `by` to counter `name` of target `id`.
pub fn count(id: &str, name: &str, by: u64) {
    let key = format!("n/{id}/{name}");
    set_u64(&key, get_u64(&key) + by);
}

/// Counter `name` of target `id`.
pub fn counter(id: &str, name: &str) -> u64 {
    get_u64(&format!("n/{id}/{name}"))
}

/// Request bodies waiting for target `id`, oldest first (at most `limit` listed).
pub fn queued(id: &str, limit: u32) -> Vec<String> {
    kv::list_keys(&format!("q/{id}/"), limit).unwrap_or_default()
}

/// A random suffix, so that two nodes of a cluster (sharing the kv store) that take the
/// same sequence number do not overwrite each other's bodies.
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(clock::now_ms());
    h.finish()
}

/// Appends bodies to one target's queue; `room` is counted once per batch of events.
pub struct Pusher<'a> {
    t: &'a Target,
    room: usize,
    seq: u64,
}

impl<'a> Pusher<'a> {
    /// Starts appending to `t`'s queue.
    pub fn new(t: &'a Target) -> Self {
        let queued = queued(&t.id, t.max_queued).len();
        Pusher {
            t,
            room: (t.max_queued as usize).saturating_sub(queued),
            seq: get_u64(&format!("s/{}", t.id)),
        }
    }

    /// Queues `body` (carrying `events` events), unless the queue is full or the store
    /// refuses it: then the events are counted as dropped.
    pub fn push(&mut self, body: &[u8], events: u64) {
        let id = &self.t.id;
        if self.room == 0 {
            count(id, "dropped", events);
            apiary_plugin_sdk::warn(&format!(
                "webhook {}: queue full, {events} events dropped",
                self.t.url
            ));
            return;
        }
        self.seq += 1;
        let mut v = events.to_be_bytes().to_vec();
        v.extend_from_slice(body);
        let key = format!("q/{id}/{:016}-{:016x}", self.seq, nonce());
        if kv::set(&key, &v).is_err() {
            count(id, "dropped", events);
            return;
        }
        self.room -= 1;
    }
}

impl Drop for Pusher<'_> {
    fn drop(&mut self) {
        set_u64(&format!("s/{}", self.t.id), self.seq);
    }
}

/// The signature header value of `body`: `sha256=<hex HMAC-SHA256 with secret>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

enum Sent {
    Delivered,
    /// A 3xx, or a 4xx other than 408/429: retrying would get the same answer.
    Rejected(u16),
    Failed(String),
}

fn send(t: &Target, secret: Option<&str>, body: &[u8]) -> Sent {
    let sig = secret.map(|s| signature(s, body));
    let mut headers: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
    if let Some(s) = &sig {
        headers.push(("x-apiary-signature", s.as_bytes()));
    }
    // The answer's body is not needed: only its status counts.
    match outbound::send("POST", &t.url, &headers, body, 0) {
        Ok(r) if (200..300).contains(&r.status) => Sent::Delivered,
        Ok(r) if (300..500).contains(&r.status) && r.status != 408 && r.status != 429 => {
            Sent::Rejected(r.status)
        }
        Ok(r) => Sent::Failed(format!("status {}", r.status)),
        Err(e) => Sent::Failed(e.to_string()),
    }
}

/// Sends what target `t` has queued, oldest first, until it fails (then waits a backoff,
/// doubling from 500 ms up to `max_backoff_ms`), `budget` requests were made, or the
/// tick has run until `until` (Unix ms: the call must end within its timeout).
pub fn drain(t: &Target, secret: Option<&str>, budget: usize, until: i64) {
    let id = &t.id;
    if clock::now_ms() < get_u64(&format!("r/{id}/at")) as i64 {
        return;
    }
    for key in queued(id, budget as u32) {
        if clock::now_ms() >= until {
            return;
        }
        let Ok(Some(v)) = kv::get(&key) else { continue };
        if v.len() < 8 {
            let _ = kv::delete(&key);
            continue;
        }
        let events = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
        match send(t, secret, &v[8..]) {
            Sent::Delivered => {
                let _ = kv::delete(&key);
                count(id, "delivered", events);
                set_u64(&format!("r/{id}/n"), 0);
            }
            Sent::Rejected(status) => {
                let _ = kv::delete(&key);
                count(id, "rejected", events);
                set_u64(&format!("r/{id}/n"), 0);
                apiary_plugin_sdk::warn(&format!(
                    "webhook {}: answered {status}, {events} events not retried",
                    t.url
                ));
            }
            Sent::Failed(why) => {
                let n = get_u64(&format!("r/{id}/n")) + 1;
                set_u64(&format!("r/{id}/n"), n);
                let wait = (500u64 << (n - 1).min(16)).min(t.max_backoff_ms);
                // From now: the failed attempt itself may have taken a while.
                let at = clock::now_ms().max(0) as u64 + wait;
                set_u64(&format!("r/{id}/at"), at);
                count(id, "failed_attempts", 1);
                apiary_plugin_sdk::warn(&format!(
                    "webhook {}: {why}; retrying in {wait} ms",
                    t.url
                ));
                return;
            }
        }
    }
}
