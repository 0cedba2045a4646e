//! One bounded queue per target in the plugin's kv store (so it survives a trap, a reload
//! and a broker restart): `q/<target>/<seq>` holds one request body, appended by the
//! event pump's calls (one at a time) and drained in order by the ticks (one at a time).
//! Counters: `n/<target>/<name>`, each written by one side only.

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

/// Adds `by` to counter `name` of target `i`.
pub fn count(i: usize, name: &str, by: u64) {
    let key = format!("n/{i}/{name}");
    set_u64(&key, get_u64(&key) + by);
}

/// Counter `name` of target `i`.
pub fn counter(i: usize, name: &str) -> u64 {
    get_u64(&format!("n/{i}/{name}"))
}

/// Request bodies waiting for target `i` (at most `limit` listed).
pub fn queued(i: usize, limit: u32) -> Vec<String> {
    kv::list_keys(&format!("q/{i}/"), limit).unwrap_or_default()
}

/// Queues `body` (carrying `events` events) for target `i`, unless its queue is full or
/// the store refuses it: then the events are counted as dropped.
pub fn push(i: usize, t: &Target, body: &[u8], events: u64) {
    if queued(i, t.max_queued).len() >= t.max_queued as usize {
        count(i, "dropped", events);
        apiary_plugin_sdk::warn(&format!(
            "webhook {}: queue full, {events} events dropped",
            t.url
        ));
        return;
    }
    let seq_key = format!("s/{i}");
    let seq = get_u64(&seq_key) + 1;
    set_u64(&seq_key, seq);
    let mut v = events.to_be_bytes().to_vec();
    v.extend_from_slice(body);
    if kv::set(&format!("q/{i}/{seq:016}"), &v).is_err() {
        count(i, "dropped", events);
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
    /// A 4xx other than 408/429: retrying would get the same answer.
    Rejected(u16),
    Failed(String),
}

fn send(t: &Target, secret: Option<&str>, body: &[u8]) -> Sent {
    let sig = secret.map(|s| signature(s, body));
    let mut headers: Vec<(&str, &[u8])> = vec![("content-type", b"application/json")];
    if let Some(s) = &sig {
        headers.push(("x-apiary-signature", s.as_bytes()));
    }
    match outbound::send("POST", &t.url, &headers, body, 64 << 10) {
        Ok(r) if (200..300).contains(&r.status) => Sent::Delivered,
        Ok(r) if (400..500).contains(&r.status) && r.status != 408 && r.status != 429 => {
            Sent::Rejected(r.status)
        }
        Ok(r) => Sent::Failed(format!("status {}", r.status)),
        Err(e) => Sent::Failed(e.to_string()),
    }
}

/// Sends what target `i` has queued, oldest first, until it fails (then waits a backoff,
/// doubling from 500 ms up to `max_backoff_ms`), `budget` requests were made, or the
/// tick has run until `until` (Unix ms: the call must end within its timeout).
pub fn drain(i: usize, t: &Target, secret: Option<&str>, budget: usize, until: i64) {
    let now = clock::now_ms();
    let retry_at = get_u64(&format!("r/{i}/at")) as i64;
    if now < retry_at {
        return;
    }
    for key in queued(i, budget as u32) {
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
                count(i, "delivered", events);
                set_u64(&format!("r/{i}/n"), 0);
            }
            Sent::Rejected(status) => {
                let _ = kv::delete(&key);
                count(i, "rejected", events);
                apiary_plugin_sdk::warn(&format!(
                    "webhook {}: answered {status}, {events} events not retried",
                    t.url
                ));
            }
            Sent::Failed(why) => {
                let n = get_u64(&format!("r/{i}/n")) + 1;
                set_u64(&format!("r/{i}/n"), n);
                let wait = (500u64 << (n - 1).min(16)).min(t.max_backoff_ms);
                set_u64(&format!("r/{i}/at"), (now as u64) + wait);
                count(i, "failed_attempts", 1);
                apiary_plugin_sdk::warn(&format!(
                    "webhook {}: {why}; retrying in {wait} ms",
                    t.url
                ));
                return;
            }
        }
    }
}
