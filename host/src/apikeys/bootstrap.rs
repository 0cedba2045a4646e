//! Bootstrap key files: `key:secret:right[,right...][:tenant=NAME]` lines, read at start.
//! Their keys are listed by the API but changed only by editing the file.

use std::path::Path;
use std::sync::Arc;

use super::{ApiKey, ApiKeyError, ApiKeyStore, Right, Source};

impl ApiKeyStore {
    /// Loads `key:secret:right[,right...][:tenant=NAME]` lines (blank lines and `#` comments skipped).
    pub fn load_file(&self, path: &Path) -> Result<usize, ApiKeyError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ApiKeyError::Read {
            path: p.clone(),
            source,
        })?;
        let source: Arc<str> = p.as_str().into();
        let mut n = 0;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: &str| ApiKeyError::Line {
                path: p.clone(),
                line: i + 1,
                reason: reason.to_string(),
            };
            // Rights contain colons themselves (`connections:read`), so only the first two
            // colons split; a tenant is an explicit trailing `:tenant=NAME`.
            let mut parts = line.splitn(3, ':');
            let (Some(key), Some(secret), Some(rest)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(err("expected key:secret:rights[:tenant=NAME]"));
            };
            let (rights, tenant) = match rest.rsplit_once(":tenant=") {
                Some((r, t)) => (r, t),
                None => (rest, "default"),
            };
            if key.is_empty() || secret.is_empty() || tenant.is_empty() {
                return Err(err("empty key, secret or tenant"));
            }
            let rights = rights
                .split(',')
                .map(|r| {
                    Right::parse(r.trim()).ok_or_else(|| {
                        let known: Vec<&str> = Right::ALL.iter().map(|r| r.as_str()).collect();
                        err(&format!(
                            "unknown right {r:?} (known: {})",
                            known.join(", ")
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut k = ApiKey::new(key, key, secret, rights, tenant);
            k.source = Source::File(source.clone());
            self.keys.write().insert(key.to_string(), k);
            n += 1;
        }
        Ok(n)
    }
}
