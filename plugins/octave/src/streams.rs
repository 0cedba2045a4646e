//! Streams: a stream is an MQTT topic of the company's tenant, path `/a/b/c` ⇔ topic
//! `a/b/c` (exact: a stream's children are other streams). Its id is stable, derived
//! from the tenant and the path, in Octave's form (`s` + 24 hex). Ids are remembered in
//! kv when a client names a stream by path, so a later subscribe by id finds the path.

use apiary_plugin_sdk::kv;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// kv prefix of known stream ids.
const KNOWN: &str = "stream/";

/// Longest stream path: remembered ids share the plugin's kv quota with pending session
/// ids, so each is kept small.
const MAX_PATH: usize = 1024;

/// A stream: its path and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// `/a/b/c`.
    pub path: String,
    /// `s` + 24 hex.
    pub id: String,
}

#[derive(Serialize, Deserialize)]
struct Known {
    tenant: String,
    path: String,
}

/// The id of the stream at `path` in `tenant`.
pub fn id_of(tenant: &str, path: &str) -> String {
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    let d = h.finalize();
    let mut s = String::with_capacity(25);
    s.push('s');
    for b in &d[..12] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The stream a path names, or why it is not one.
pub fn by_path(tenant: &str, path: &str) -> Result<Stream, String> {
    let topic = path
        .strip_prefix('/')
        .ok_or_else(|| format!("path {path:?} must start with /"))?;
    if topic.is_empty() || topic.ends_with('/') {
        return Err(format!("path {path:?} names no stream"));
    }
    if topic.contains(['+', '#', '\0']) || topic.starts_with('$') {
        return Err(format!(
            "path {path:?} is not a stream path (no +, #, or leading $)"
        ));
    }
    if path.len() > MAX_PATH {
        return Err(format!("path is too long (at most {MAX_PATH} bytes)"));
    }
    Ok(Stream {
        path: path.to_string(),
        id: id_of(tenant, path),
    })
}

/// The MQTT topic of a stream.
pub fn topic(s: &Stream) -> &str {
    &s.path[1..]
}

/// Remembers a stream's id (best effort: a full kv only means subscribe-by-id fails).
pub fn remember(tenant: &str, s: &Stream) {
    let key = format!("{KNOWN}{}", s.id);
    if matches!(kv::get(&key), Ok(Some(_))) {
        return;
    }
    let v = serde_json::to_vec(&Known {
        tenant: tenant.to_string(),
        path: s.path.clone(),
    })
    .unwrap_or_default();
    let _ = kv::set(&key, &v);
}

/// The stream with an id, if a client of this tenant named it by path before.
pub fn by_id(tenant: &str, id: &str) -> Result<Stream, String> {
    let well_formed =
        id.len() == 25 && id.starts_with('s') && id[1..].bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(format!("streamId {id:?} is not a stream id (s + 24 hex)"));
    }
    let known = kv::get(&format!("{KNOWN}{id}"))
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_slice::<Known>(&v).ok())
        .filter(|k| k.tenant == tenant);
    match known {
        Some(k) => Ok(Stream {
            path: k.path,
            id: id.to_string(),
        }),
        None => Err(format!(
            "unknown streamId {id}: subscribe by path first, or check the company"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_tenant_and_path() {
        let a = id_of("acme", "/a/b");
        assert_eq!(a.len(), 25);
        assert!(a.starts_with('s'));
        assert_eq!(a, id_of("acme", "/a/b"));
        assert_ne!(a, id_of("other", "/a/b"), "tenants do not share ids");
        assert_ne!(a, id_of("acme", "/a/b/c"));
    }

    #[test]
    fn paths_are_exact_topics() {
        let s = by_path("t", "/my/stream/path").unwrap();
        assert_eq!(topic(&s), "my/stream/path");
        for bad in ["my/path", "/", "/a/", "/a/+", "/a/#", "/$SYS/x", ""] {
            assert!(by_path("t", bad).is_err(), "{bad:?} should be refused");
        }
        assert!(by_path("t", &format!("/{}", "a".repeat(MAX_PATH))).is_err());
    }
}
