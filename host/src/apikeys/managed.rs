//! Keys managed over the API: created, changed, rotated and deleted at run time, kept in
//! `data_dir/api-keys.json` (mode 0600, replaced atomically and fsynced before a change
//! is acknowledged). A change is written first and applied to memory second, one change
//! at a time, so what the API answered is what a restart loads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;

use super::records::{self, Sealer};
use super::{unix_now, ApiKey, ApiKeyError, ApiKeyStore, Right, Secret, Source};
use crate::secrets;

/// Managed keys at most: a bound on the file and on `verify_secret`'s scan.
pub const MAX_MANAGED: usize = 1000;

/// Where managed keys are kept.
#[derive(Debug)]
pub(super) struct Backing {
    path: PathBuf,
    sealer: Sealer,
}

/// A key to create.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Unique name (letters, digits, `-`, `_`, `.`; up to 128).
    pub name: String,
    /// Free text (up to 1024 characters).
    pub desc: String,
    /// Tenant, or `*` for every tenant.
    pub tenant: String,
    /// Rights (at least one).
    pub rights: Vec<Right>,
    /// Unix seconds from which it is refused.
    pub expires_at: Option<u64>,
    /// Accepted from the start.
    pub enabled: bool,
    /// Keep the secret (sealed) for HMAC-signed requests such as Beebotte's.
    pub signing: bool,
}

/// Changes to a key; None leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyChange {
    /// New description.
    pub desc: Option<String>,
    /// New tenant.
    pub tenant: Option<String>,
    /// New rights.
    pub rights: Option<Vec<Right>>,
    /// New expiry (Some(None): never).
    pub expires_at: Option<Option<u64>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// Why a change to the managed keys was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    /// Started without managed keys (no data dir).
    #[error("API keys cannot be managed: the broker runs without a data dir for them")]
    NoBacking,
    /// No key by that name.
    #[error("no API key named {0:?}")]
    NotFound(String),
    /// The name is taken.
    #[error("an API key named {0:?} exists")]
    Exists(String),
    /// A bootstrap file's key.
    #[error("API key {name:?} is defined in {path}; edit that file to change it")]
    FromFile {
        /// Its name.
        name: String,
        /// The file.
        path: String,
    },
    /// A field is out of bounds.
    #[error("{0}")]
    Invalid(String),
    /// Too many keys.
    #[error("at most {MAX_MANAGED} managed API keys; delete some first")]
    TooMany,
    /// The file could not be written: nothing changed.
    #[error("could not save the API keys ({0}); nothing changed")]
    Write(String),
}

fn check_name(name: &str) -> Result<(), ManagedError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    ok.then_some(()).ok_or_else(|| {
        ManagedError::Invalid(format!(
            "name {name:?}: 1 to 128 letters, digits, '-', '_' or '.'"
        ))
    })
}

fn check_fields(
    desc: Option<&str>,
    tenant: Option<&str>,
    rights: Option<&[Right]>,
) -> Result<(), ManagedError> {
    let invalid = |m: &str| Err(ManagedError::Invalid(m.to_string()));
    if desc.is_some_and(|d| d.chars().count() > 1024) {
        return invalid("desc: at most 1024 characters");
    }
    if tenant.is_some_and(|t| t.is_empty() || t.len() > 256 || t.contains(':')) {
        return invalid("tenant: 1 to 256 characters without ':' (\"*\" for every tenant)");
    }
    if rights.is_some_and(|r| r.is_empty()) {
        return invalid("rights: at least one right");
    }
    Ok(())
}

/// A new secret: 32 random bytes, base64url (43 characters).
fn new_secret() -> String {
    B64URL.encode(rand::random::<[u8; 32]>())
}

impl ApiKeyStore {
    /// Opens the managed keys in `dir` (`api-keys.json`, sealed under `api-keys.key`,
    /// both created when first needed) and loads them. Returns how many there were.
    pub fn open_managed(&self, dir: &Path) -> Result<usize, ApiKeyError> {
        let path = dir.join("api-keys.json");
        let err = |reason: String| ApiKeyError::Managed {
            path: path.display().to_string(),
            reason,
        };
        let key = secrets::key_file(&dir.join("api-keys.key"))
            .map_err(|e| err(format!("its sealing key api-keys.key: {e}")))?;
        let sealer = Sealer::new(&key);
        let mut loaded = Vec::new();
        if path.exists() {
            secrets::tighten(&path).map_err(|e| err(e.to_string()))?;
            let bytes = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
            loaded = records::decode(&bytes, &sealer).map_err(|why| {
                err(format!(
                    "{why}. Fix the file, or move it aside to start without its keys"
                ))
            })?;
        }
        let n = loaded.len();
        let mut keys = self.keys.write();
        for k in loaded {
            if let Some(other) = keys.get(&k.key) {
                return Err(err(format!(
                    "key id {:?} is also defined by {:?}",
                    k.key, other.source
                )));
            }
            keys.insert(k.key.clone(), k);
        }
        *self.managed.lock() = Some(Backing { path, sealer });
        Ok(n)
    }

    /// Writes `next`'s managed keys, then makes `next` the store's keys. The caller holds
    /// the backing lock, so changes apply one at a time.
    fn commit(&self, b: &Backing, next: HashMap<String, ApiKey>) -> Result<(), ManagedError> {
        // Cleared before the times are read: a use while writing marks it again.
        self.used_since_write.store(false, Ordering::Relaxed);
        let managed = next.values().filter(|k| k.source == Source::Managed);
        let bytes = records::encode(managed, &b.sealer);
        secrets::write_private(&b.path, &bytes).map_err(|e| {
            self.used_since_write.store(true, Ordering::Relaxed);
            ManagedError::Write(e.to_string())
        })?;
        *self.keys.write() = next;
        Ok(())
    }

    /// Runs `change` on a copy of the keys and commits it.
    fn change<T>(
        &self,
        change: impl FnOnce(&mut HashMap<String, ApiKey>) -> Result<T, ManagedError>,
    ) -> Result<T, ManagedError> {
        let guard = self.managed.lock();
        let b = guard.as_ref().ok_or(ManagedError::NoBacking)?;
        let mut next = self.keys.read().clone();
        let out = change(&mut next)?;
        self.commit(b, next)?;
        Ok(out)
    }

    /// Creates a key; returns it and its secret (shown once: only its hash is kept, and
    /// for a signing key a sealed copy).
    pub fn create(&self, new: NewKey) -> Result<(ApiKey, String), ManagedError> {
        check_name(&new.name)?;
        check_fields(Some(&new.desc), Some(&new.tenant), Some(&new.rights))?;
        if new.expires_at.is_some_and(|e| e <= unix_now()) {
            return Err(ManagedError::Invalid("expired_at is in the past".into()));
        }
        self.change(|keys| {
            if keys.values().any(|k| k.name == new.name) {
                return Err(ManagedError::Exists(new.name.clone()));
            }
            if keys
                .values()
                .filter(|k| k.source == Source::Managed)
                .count()
                >= MAX_MANAGED
            {
                return Err(ManagedError::TooMany);
            }
            let id = loop {
                let id = format!("{:016x}", rand::random::<u64>());
                if !keys.contains_key(&id) {
                    break id;
                }
            };
            let secret = new_secret();
            let mut k = ApiKey::new(&id, &new.name, &secret, new.rights.clone(), &new.tenant);
            k.desc = new.desc.clone();
            k.expires_at = new.expires_at;
            k.enabled = new.enabled;
            if !new.signing {
                k.secret = None;
            }
            keys.insert(id, k.clone());
            Ok((k, secret))
        })
    }

    /// The managed key named `name` in `keys`, for changing.
    fn managed_mut<'a>(
        keys: &'a mut HashMap<String, ApiKey>,
        name: &str,
    ) -> Result<&'a mut ApiKey, ManagedError> {
        let k = keys
            .values_mut()
            .find(|k| k.name == name)
            .ok_or_else(|| ManagedError::NotFound(name.to_string()))?;
        match &k.source {
            Source::Managed => Ok(k),
            Source::File(path) => Err(ManagedError::FromFile {
                name: name.to_string(),
                path: path.to_string(),
            }),
        }
    }

    /// Changes a managed key's description, tenant, rights, expiry or state.
    pub fn update(&self, name: &str, ch: KeyChange) -> Result<ApiKey, ManagedError> {
        check_fields(
            ch.desc.as_deref(),
            ch.tenant.as_deref(),
            ch.rights.as_deref(),
        )?;
        self.change(|keys| {
            let k = Self::managed_mut(keys, name)?;
            if let Some(d) = ch.desc {
                k.desc = d;
            }
            if let Some(t) = ch.tenant {
                k.tenant = t;
            }
            if let Some(r) = ch.rights {
                k.rights = r;
            }
            if let Some(e) = ch.expires_at {
                k.expires_at = e;
            }
            if let Some(e) = ch.enabled {
                k.enabled = e;
            }
            Ok(k.clone())
        })
    }

    /// Gives a managed key a new secret (same key id); the old one is refused at once.
    pub fn rotate(&self, name: &str) -> Result<(ApiKey, String), ManagedError> {
        self.change(|keys| {
            let k = Self::managed_mut(keys, name)?;
            let secret = new_secret();
            let fresh = ApiKey::new(&k.key, &k.name, &secret, Vec::new(), "");
            k.salt = fresh.salt;
            k.hash = fresh.hash;
            if k.secret.is_some() {
                k.secret = Some(Secret(secret.as_str().into()));
            }
            Ok((k.clone(), secret))
        })
    }

    /// Deletes a managed key; it is refused at once everywhere.
    pub fn delete(&self, name: &str) -> Result<(), ManagedError> {
        self.change(|keys| {
            let id = Self::managed_mut(keys, name)?.key.clone();
            keys.remove(&id);
            Ok(())
        })
    }

    /// Saves the managed keys' last-used times if any changed since the last write.
    pub fn save_last_used(&self) -> Result<(), ManagedError> {
        if !self.used_since_write.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.change(|_| Ok(()))
    }
}
