//! Written records: `write` keeps the last `records_per_resource` records of each
//! channel/resource in the plugin's kv, and `read` returns the newest. Keys are
//! `rec/<tenant>/<channel>/<resource>/<i64::MAX - write ms>-<random>`, so a prefix listing
//! is newest first: a read lists only what it returns. Each account holds at most
//! `resources_per_account` resources, so one account cannot fill the store for the others.

use std::sync::atomic::Ordering;

use apiary_plugin_sdk::{clock, kv, types};
use serde_json::{json, Value};

use crate::{RECORDS_PER_RESOURCE, RESOURCES_PER_ACCOUNT};

/// A tenant name as a key segment (`/` would merge it with the channel).
pub fn segment(tenant: &str) -> String {
    tenant.replace('%', "%25").replace('/', "%2F")
}

fn prefix(tenant: &str, channel: &str, resource: &str) -> String {
    format!("rec/{}/{channel}/{resource}/", segment(tenant))
}

/// Per resource: records written since the last trim (a hint: racing writers may each
/// miss the other's increment; trimming counts from the listing itself).
fn count_key(tenant: &str, channel: &str, resource: &str) -> String {
    format!("recn/{}/{channel}/{resource}", segment(tenant))
}

fn read_u64(key: &str) -> Result<Option<u64>, types::Error> {
    Ok(kv::get(key)?.and_then(|v| String::from_utf8(v).ok()?.parse().ok()))
}

/// Records a resource the account writes to for the first time, within its limit.
fn admit_resource(tenant: &str) -> Result<(), types::Error> {
    let k = format!("recr/{}", segment(tenant));
    let n = read_u64(&k)?.unwrap_or(0);
    let max = RESOURCES_PER_ACCOUNT.load(Ordering::Relaxed);
    if n >= max {
        return Err(types::Error::QuotaExceeded(format!(
            "the account holds its maximum of {max} written resources"
        )));
    }
    kv::set(&k, (n + 1).to_string().as_bytes())
}

/// Stores one record; returns its id. Beyond the limit the oldest records go.
pub fn write(
    tenant: &str,
    channel: &str,
    resource: &str,
    data: &Value,
    ts: i64,
) -> Result<String, types::Error> {
    let ck = count_key(tenant, channel, resource);
    let n = match read_u64(&ck)? {
        Some(n) => n + 1,
        None => {
            admit_resource(tenant)?;
            1
        }
    };
    let now = clock::now_ms().max(0);
    let rand = crate::tokens::random(6).unwrap_or_default();
    let id = format!("{:019}-{rand}", i64::MAX - now);
    let rec = json!({"data": data, "ts": ts, "wts": now});
    let p = prefix(tenant, channel, resource);
    kv::set(&format!("{p}{id}"), rec.to_string().as_bytes())?;
    let max = RECORDS_PER_RESOURCE.load(Ordering::Relaxed);
    // Trim in batches (a tenth of the limit over it), not on every write.
    if n > max + max / 10 {
        trim(&p, max as u32)?;
        kv::set(&ck, max.to_string().as_bytes())?;
    } else {
        kv::set(&ck, n.to_string().as_bytes())?;
    }
    Ok(id)
}

/// Deletes every record of `p` beyond the newest `max`, however many racing writers left.
fn trim(p: &str, max: u32) -> Result<(), types::Error> {
    let window = max.saturating_mul(2).max(max + 64);
    loop {
        let keys = kv::list_keys(p, window)?;
        for k in keys.iter().skip(max as usize) {
            kv::delete(k)?;
        }
        if keys.len() < window as usize {
            return Ok(());
        }
    }
}

/// The newest `limit` records, oldest first, as `{_id, data, ts, wts}`.
pub fn read(
    tenant: &str,
    channel: &str,
    resource: &str,
    limit: u32,
) -> Result<Vec<Value>, types::Error> {
    let p = prefix(tenant, channel, resource);
    let mut out = Vec::new();
    for k in kv::list_keys(&p, limit)?.iter().rev() {
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

    #[test]
    fn ids_sort_newest_first() {
        let id = |ms: i64| format!("{:019}-x", i64::MAX - ms);
        assert!(id(2_000) < id(1_000));
        assert!(id(999_999_999_999_999) < id(9));
    }
}
