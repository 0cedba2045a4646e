//! API keys for every admin surface (the native API, and admin API plugins through the
//! `apikeys` host interface): key id, salted SHA-256 of the secret, tenant, rights.
//! Secrets are high-entropy tokens, so a fast salted hash is enough
//! (docs/decisions/0003-api-key-hashing.md); comparison is constant-time. Keys come from
//! bootstrap files (`bootstrap`) or are managed over the API and kept in the data dir
//! (`managed`, decision 0019); both live in one store, so a revocation holds on every
//! surface at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use parking_lot::{Mutex, RwLock};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use apiary_common::rights::Right;

mod bootstrap;
mod managed;
mod records;

pub use managed::{KeyChange, ManagedError, NewKey};

/// Errors loading keys at start.
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
    /// The managed keys file (or its sealing key) is unusable.
    #[error("managed API keys {path}: {reason}")]
    Managed {
        /// Path.
        path: String,
        /// What is wrong, and what to do.
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

/// Where a key is defined: only managed keys change over the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A bootstrap file (its path): edit the file to change the key.
    File(Arc<str>),
    /// Created over the API, kept in `data_dir/api-keys.json`.
    Managed,
}

/// One key as stored.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Key id (the basic-auth user).
    pub key: String,
    /// Unique name the API addresses the key by (a file key's name is its id).
    pub name: String,
    salt: [u8; 16],
    hash: [u8; 32],
    /// Kept for signed-request schemes: always for file keys, for managed keys only
    /// when created with `signing` (sealed on disk).
    secret: Option<Secret>,
    /// Tenant the key acts on (`default` unless given; `*` for every tenant).
    pub tenant: String,
    /// Rights.
    pub rights: Vec<Right>,
    /// Free text.
    pub desc: String,
    /// Unix seconds it was created (file keys: when loaded).
    pub created_at: u64,
    /// Unix seconds from which it is refused; None: never.
    pub expires_at: Option<u64>,
    /// A disabled key is refused everywhere.
    pub enabled: bool,
    /// Where it is defined.
    pub source: Source,
    /// Unix seconds of its last successful use (0: never); shared by the clones.
    last_used: Arc<AtomicU64>,
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ApiKey {
    /// A key with a fresh salt over `secret`.
    fn new(key: &str, name: &str, secret: &str, rights: Vec<Right>, tenant: &str) -> Self {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        ApiKey {
            key: key.to_string(),
            name: name.to_string(),
            salt,
            hash: digest(&salt, secret),
            secret: Some(Secret(secret.into())),
            tenant: tenant.to_string(),
            rights,
            desc: String::new(),
            created_at: unix_now(),
            expires_at: None,
            enabled: true,
            source: Source::Managed,
            last_used: Arc::default(),
        }
    }

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

    /// Whether its expiry has passed at `now`.
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|e| now >= e)
    }

    /// Whether it is accepted at `now`: enabled and not expired.
    pub fn usable(&self, now: u64) -> bool {
        self.enabled && !self.expired(now)
    }

    /// Whether signed-request schemes (HMAC) can use it.
    pub fn signs(&self) -> bool {
        self.secret.is_some()
    }

    /// Unix seconds of its last successful use.
    pub fn last_used(&self) -> Option<u64> {
        Some(self.last_used.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    /// The MAC of `message` under this key's secret (None: the secret is not kept).
    pub fn mac(&self, alg: MacAlgorithm, message: &[u8]) -> Option<Vec<u8>> {
        Some(mac_with(self.secret.as_ref()?.0.as_bytes(), alg, message))
    }
}

/// The MAC of `message` under key `k`.
fn mac_with(k: &[u8], alg: MacAlgorithm, message: &[u8]) -> Vec<u8> {
    {
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
    /// The managed keys' file and sealing key, once opened; held across a change so
    /// that changes are written one at a time.
    managed: Mutex<Option<managed::Backing>>,
    /// A managed key was used since the file was last written.
    used_since_write: AtomicBool,
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
    /// Adds or replaces a key (defined in code or a file: never written to the data dir).
    pub fn add(&self, key: &str, secret: &str, rights: Vec<Right>, tenant: &str) {
        let mut k = ApiKey::new(key, key, secret, rights, tenant);
        k.source = Source::File("(built in)".into());
        self.keys.write().insert(key.to_string(), k);
    }

    /// Notes a successful use: its time is shown, and saved with the managed keys.
    fn used(&self, k: &ApiKey, now: u64) -> ApiKey {
        if k.last_used.swap(now, Ordering::Relaxed) != now && k.source == Source::Managed {
            self.used_since_write.store(true, Ordering::Relaxed);
        }
        k.clone()
    }

    /// Verifies a key and secret; returns the key's record. An unknown key id costs what
    /// a wrong secret costs (a digest and a comparison), so timing does not tell which
    /// key ids exist. Disabled and expired keys are refused.
    pub fn verify(&self, key: &str, secret: &str) -> Option<ApiKey> {
        let keys = self.keys.read();
        let Some(k) = keys.get(key) else {
            let d = digest(&DUMMY_SALT, secret);
            let _ = std::hint::black_box(ct_eq(&d, &DUMMY_HASH));
            return None;
        };
        let d = digest(&k.salt, secret);
        let now = unix_now();
        (ct_eq(&d, &k.hash) && k.usable(now)).then(|| self.used(k, now))
    }

    /// The key whose secret is `secret`. Every key's digest is computed and compared, so
    /// the time taken does not depend on which key (if any) matched.
    pub fn verify_secret(&self, secret: &str) -> Option<ApiKey> {
        let keys = self.keys.read();
        let now = unix_now();
        let mut found = None;
        for k in keys.values() {
            if ct_eq(&digest(&k.salt, secret), &k.hash) && k.usable(now) {
                found = Some(k);
            }
        }
        found.map(|k| self.used(k, now))
    }

    /// A usable key's record, unchecked.
    pub fn lookup(&self, key: &str) -> Option<ApiKey> {
        let now = unix_now();
        self.keys.read().get(key).filter(|k| k.usable(now)).cloned()
    }

    /// Every key (usable or not), by name.
    pub fn list(&self) -> Vec<ApiKey> {
        let mut v: Vec<ApiKey> = self.keys.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The key named `name`, usable or not.
    pub fn by_name(&self, name: &str) -> Option<ApiKey> {
        self.keys.read().values().find(|k| k.name == name).cloned()
    }

    /// Verifies a signature: the MAC of `message` under the key's secret.
    pub fn verify_mac(
        &self,
        key: &str,
        alg: MacAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Option<ApiKey> {
        let keys = self.keys.read();
        let now = unix_now();
        let Some(k) = keys.get(key).filter(|k| k.signs()) else {
            // As much work as for a known key: timing does not tell which ids exist.
            let mac = mac_with(b"apiary-unknown-key", alg, message);
            let _ = std::hint::black_box(ct_eq(&mac, signature));
            return None;
        };
        let ok = k.mac(alg, message).is_some_and(|m| ct_eq(&m, signature));
        (ok && k.usable(now)).then(|| self.used(k, now))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.read().len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
