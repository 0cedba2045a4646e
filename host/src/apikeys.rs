//! API keys for every admin surface (the native API, and admin API plugins through the
//! `apikeys` host interface): key id, salted SHA-256 of the secret, tenant, rights.
//! Secrets are high-entropy tokens, so a fast salted hash is enough
//! (docs/decisions/0003-api-key-hashing.md); comparison is constant-time. The secret itself
//! is kept in memory (never shown) for signed-request schemes such as Beebotte's HMAC.

use std::collections::HashMap;
use std::path::Path;

use hmac::{Hmac, Mac};
use parking_lot::RwLock;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use apiary_common::rights::Right;

/// Errors loading the bootstrap file.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// File unreadable.
    #[error("cannot read api keys file {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A line does not parse.
    #[error("api keys file {path} line {line}: {reason}")]
    Line {
        /// Path.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A secret kept for MACs; `Debug` never prints it.
#[derive(Clone)]
struct Secret(Box<str>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// MAC algorithms of signed-request schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacAlgorithm {
    /// HMAC-SHA1.
    HmacSha1,
    /// HMAC-SHA256.
    HmacSha256,
}

/// One key as stored.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Key id (the basic-auth user).
    pub key: String,
    salt: [u8; 16],
    hash: [u8; 32],
    secret: Secret,
    /// Tenant the key acts on (`default` unless given; `*` for every tenant).
    pub tenant: String,
    /// Rights.
    pub rights: Vec<Right>,
}

impl ApiKey {
    /// Whether the key holds `right` (admin holds every right).
    pub fn has(&self, right: Right) -> bool {
        self.rights.iter().any(|&r| r == right || r == Right::Admin)
    }

    /// Whether the key spans every tenant (`tenant=*`), as broker-wide routes require.
    pub fn is_global(&self) -> bool {
        self.tenant == "*"
    }

    /// Whether the key may act on `tenant` (`*`: a request spanning every tenant).
    pub fn may_touch(&self, tenant: &str) -> bool {
        self.tenant == "*" || self.tenant == tenant
    }

    /// The MAC of `message` under this key's secret.
    pub fn mac(&self, alg: MacAlgorithm, message: &[u8]) -> Vec<u8> {
        let k = self.secret.0.as_bytes();
        match alg {
            MacAlgorithm::HmacSha1 => {
                let mut m = Hmac::<sha1::Sha1>::new_from_slice(k).expect("HMAC takes any key");
                m.update(message);
                m.finalize().into_bytes().to_vec()
            }
            MacAlgorithm::HmacSha256 => {
                let mut m = Hmac::<Sha256>::new_from_slice(k).expect("HMAC takes any key");
                m.update(message);
                m.finalize().into_bytes().to_vec()
            }
        }
    }
}

/// Constant-time equality (length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key store.
#[derive(Debug, Default)]
pub struct ApiKeyStore {
    keys: RwLock<HashMap<String, ApiKey>>,
}

/// Salt and hash an unknown key id is checked against (never matches a real digest).
const DUMMY_SALT: [u8; 16] = [0x5a; 16];
const DUMMY_HASH: [u8; 32] = [0; 32];

fn digest(salt: &[u8; 16], secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    h.finalize().into()
}

impl ApiKeyStore {
    /// Adds or replaces a key.
    pub fn add(&self, key: &str, secret: &str, rights: Vec<Right>, tenant: &str) {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let k = ApiKey {
            key: key.to_string(),
            salt,
            hash: digest(&salt, secret),
            secret: Secret(secret.into()),
            tenant: tenant.to_string(),
            rights,
        };
        self.keys.write().insert(key.to_string(), k);
    }

    /// Verifies a key and secret; returns the key's record. An unknown key id costs what
    /// a wrong secret costs (a digest and a comparison), so timing does not tell which
    /// key ids exist.
    pub fn verify(&self, key: &str, secret: &str) -> Option<ApiKey> {
        let keys = self.keys.read();
        let Some(k) = keys.get(key) else {
            let d = digest(&DUMMY_SALT, secret);
            let _ = std::hint::black_box(ct_eq(&d, &DUMMY_HASH));
            return None;
        };
        let d = digest(&k.salt, secret);
        ct_eq(&d, &k.hash).then(|| k.clone())
    }

    /// The key whose secret is `secret`. Every key's digest is computed and compared, so
    /// the time taken does not depend on which key (if any) matched.
    pub fn verify_secret(&self, secret: &str) -> Option<ApiKey> {
        let keys = self.keys.read();
        let mut found = None;
        for k in keys.values() {
            if ct_eq(&digest(&k.salt, secret), &k.hash) {
                found = Some(k.clone());
            }
        }
        found
    }

    /// A key's record, unchecked.
    pub fn lookup(&self, key: &str) -> Option<ApiKey> {
        self.keys.read().get(key).cloned()
    }

    /// Verifies a signature: the MAC of `message` under the key's secret.
    pub fn verify_mac(
        &self,
        key: &str,
        alg: MacAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Option<ApiKey> {
        let Some(k) = self.lookup(key) else {
            // As much work as for a known key: timing does not tell which ids exist.
            let dummy = ApiKey {
                key: String::new(),
                salt: DUMMY_SALT,
                hash: DUMMY_HASH,
                secret: Secret("apiary-unknown-key".into()),
                tenant: String::new(),
                rights: Vec::new(),
            };
            let _ = std::hint::black_box(ct_eq(&dummy.mac(alg, message), signature));
            return None;
        };
        ct_eq(&k.mac(alg, message), signature).then_some(k)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.read().len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads `key:secret:right[,right...][:tenant=NAME]` lines (blank lines and `#` comments skipped).
    pub fn load_file(&self, path: &Path) -> Result<usize, ApiKeyError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ApiKeyError::Read {
            path: p.clone(),
            source,
        })?;
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
            self.add(key, secret, rights, tenant);
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_and_rights() {
        let s = ApiKeyStore::default();
        s.add("k", "secret", vec![Right::ConnectionsRead], "t1");
        let k = s.verify("k", "secret").unwrap();
        assert_eq!(k.tenant, "t1");
        assert!(k.has(Right::ConnectionsRead));
        assert!(!k.has(Right::Publish));
        assert!(s.verify("k", "wrong").is_none());
        assert!(s.verify("nokey", "secret").is_none());
        s.add("k2", "other", vec![Right::Publish], "t2");
        assert_eq!(s.verify_secret("other").unwrap().key, "k2");
        assert_eq!(s.verify_secret("secret").unwrap().key, "k");
        assert!(s.verify_secret("nothing").is_none());
        assert!(
            !format!("{k:?}").contains("secret\""),
            "Debug hides the secret"
        );
    }

    #[test]
    fn macs_match_the_rfc_vectors_and_verify_in_the_store() {
        // RFC 2202 / RFC 4231 test case 2: key "Jefe".
        let s = ApiKeyStore::default();
        s.add("k", "Jefe", vec![Right::Admin], "*");
        let msg = b"what do ya want for nothing?";
        let k = s.lookup("k").unwrap();
        let hex = |v: Vec<u8>| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(k.mac(MacAlgorithm::HmacSha1, msg)),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            hex(k.mac(MacAlgorithm::HmacSha256, msg)),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let sig = k.mac(MacAlgorithm::HmacSha1, msg);
        assert!(s
            .verify_mac("k", MacAlgorithm::HmacSha1, msg, &sig)
            .is_some());
        assert!(s
            .verify_mac("k", MacAlgorithm::HmacSha256, msg, &sig)
            .is_none());
        assert!(s
            .verify_mac("k", MacAlgorithm::HmacSha1, b"other", &sig)
            .is_none());
        assert!(k.may_touch("anything"));
    }

    #[test]
    fn bootstrap_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        std::fs::write(
            &p,
            "# comment\nadmin:s3cret:admin\nro:x:connections:read,publish:tenant=acme\n",
        )
        .unwrap();
        let s = ApiKeyStore::default();
        assert_eq!(s.load_file(&p).unwrap(), 2);
        assert!(s.verify("admin", "s3cret").unwrap().has(Right::Publish));
        let ro = s.verify("ro", "x").unwrap();
        assert_eq!(ro.tenant, "acme");
        assert!(ro.has(Right::ConnectionsRead) && ro.has(Right::Publish));
        assert!(!ro.has(Right::ConnectionsWrite));
        std::fs::write(&p, "a:b:fly\n").unwrap();
        let e = s.load_file(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("fly"), "{e}");
    }
}
