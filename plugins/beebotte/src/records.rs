//! Written records: `write` keeps the last `records_per_resource` records of each
//! channel/resource in the plugin's kv, in write order, and `read` returns the newest.
//! Keys are `rec/<tenant>/<channel>/<resource>/<write ms>-<random>`, so a prefix listing is
//! oldest first and trimming lists only what goes.

use std::sync::atomic::Ordering;

use apiary_plugin_sdk::{clock, kv, types};
use serde_json::{json, Value};

use crate::RECORDS_PER_RESOURCE;

/// A tenant name as a key segment (`/` would merge it with the channel).
fn segment(tenant: &str) -> String {
    tenant.replace('%', "%25").replace('/', "%2F")
}

fn prefix(tenant: &str, channel: &str, resource: &str) -> String {
    format!("rec/{}/{channel}/{resource}/", segment(tenant))
}

fn count_key(tenant: &str, channel: &str, resource: &str) -> String {
    format!("recn/{}/{channel}/{resource}", segment(tenant))
}

fn count(key: &str) -> Result<u64, types::Error> {
    Ok(kv::get(key)?
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0))
}

/// Stores one record; returns its id. The oldest records beyond the limit are deleted.
pub fn write(
    tenant: &str,
    channel: &str,
    resource: &str,
    data: &Value,
    ts: i64,
) -> Result<String, types::Error> {
    let now = clock::now_ms();
    let rand = crate::tokens::random(6).unwrap_or_default();
    let id = format!("{:013}-{rand}", now.max(0));
    let rec = json!({"data": data, "ts": ts, "wts": now});
    let p = prefix(tenant, channel, resource);
    kv::set(&format!("{p}{id}"), rec.to_string().as_bytes())?;
    let ck = count_key(tenant, channel, resource);
    // Concurrent writers may each miss the other's increment: the count then lags and
    // trimming keeps a few records more than the limit, never fewer.
    let n = count(&ck)? + 1;
    let max = RECORDS_PER_RESOURCE.load(Ordering::Relaxed);
    let n = if n > max {
        let excess = (n - max).min(u32::MAX as u64) as u32;
        for k in kv::list_keys(&p, excess)? {
            kv::delete(&k)?;
        }
        max
    } else {
        n
    };
    kv::set(&ck, n.to_string().as_bytes())?;
    Ok(id)
}

/// The newest `limit` records, oldest first, as `{_id, data, ts, wts}`.
pub fn read(
    tenant: &str,
    channel: &str,
    resource: &str,
    limit: u32,
) -> Result<Vec<Value>, types::Error> {
    let p = prefix(tenant, channel, resource);
    let max = RECORDS_PER_RESOURCE.load(Ordering::Relaxed) as u32;
    // Slack for records a racing writer has not trimmed yet.
    let keys = kv::list_keys(&p, max.saturating_add(1024))?;
    let skip = keys.len().saturating_sub(limit as usize);
    let mut out = Vec::new();
    for k in &keys[skip..] {
        let Some(v) = kv::get(k)? else { continue };
        let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(&v) else {
            continue;
        };
        o.insert("_id".into(), k[p.len()..].into());
        out.push(Value::Object(o));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_cannot_collide_through_slashes() {
        assert_ne!(prefix("a/b", "c", "r"), prefix("a", "b", "c/r"));
        assert_eq!(prefix("t", "c", "r"), "rec/t/c/r/");
    }
}
