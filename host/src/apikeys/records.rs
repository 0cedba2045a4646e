//! The managed keys' file, `data_dir/api-keys.json`: one JSON record per key with the
//! salted hash of its secret; a signing key's secret is sealed (ChaCha20-Poly1305, the
//! key id as associated data) under the 32-byte `data_dir/api-keys.key`.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};

use super::{ApiKey, Right, Secret, Source};

/// The file's format version.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    keys: Vec<Record>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    name: String,
    key: String,
    salt: String,
    hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_secret: Option<String>,
    tenant: String,
    rights: Vec<String>,
    #[serde(default)]
    desc: String,
    created_at: u64,
    #[serde(default)]
    expires_at: Option<u64>,
    enabled: bool,
    #[serde(default)]
    last_used_at: Option<u64>,
}

/// Seals and opens signing secrets.
pub(super) struct Sealer(LessSafeKey);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

impl Sealer {
    /// A sealer over a 32-byte key.
    pub(super) fn new(key: &[u8; 32]) -> Self {
        let k = UnboundKey::new(&CHACHA20_POLY1305, key).expect("32 bytes is the key length");
        Sealer(LessSafeKey::new(k))
    }

    /// base64(nonce || ciphertext || tag), bound to `key_id`.
    fn seal(&self, key_id: &str, secret: &str) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut buf = secret.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key_id.as_bytes()),
                &mut buf,
            )
            .expect("sealing a short secret cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        B64.encode(out)
    }

    /// The secret sealed by [`Sealer::seal`] for `key_id`, if it opens.
    fn open(&self, key_id: &str, sealed: &str) -> Option<String> {
        let bytes = B64.decode(sealed).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut ct = ct.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(key_id.as_bytes()), &mut ct)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

/// The file's bytes for `keys` (the managed ones).
pub(super) fn encode<'a>(keys: impl Iterator<Item = &'a ApiKey>, sealer: &Sealer) -> Vec<u8> {
    let mut records: Vec<Record> = keys
        .map(|k| Record {
            name: k.name.clone(),
            key: k.key.clone(),
            salt: B64.encode(k.salt),
            hash: B64.encode(k.hash),
            sealed_secret: k.secret.as_ref().map(|s| sealer.seal(&k.key, &s.0)),
            tenant: k.tenant.clone(),
            rights: k.rights.iter().map(|r| r.as_str().to_string()).collect(),
            desc: k.desc.clone(),
            created_at: k.created_at,
            expires_at: k.expires_at,
            enabled: k.enabled,
            last_used_at: k.last_used(),
        })
        .collect();
    records.sort_by(|a, b| a.name.cmp(&b.name));
    let file = File {
        version: VERSION,
        keys: records,
    };
    serde_json::to_vec_pretty(&file).expect("records serialize")
}

/// The keys in the file's `bytes`, or what is wrong with it.
pub(super) fn decode(bytes: &[u8], sealer: &Sealer) -> Result<Vec<ApiKey>, String> {
    let file: File = serde_json::from_slice(bytes).map_err(|e| format!("not valid: {e}"))?;
    if file.version != VERSION {
        return Err(format!(
            "format version {} (this release reads {VERSION})",
            file.version
        ));
    }
    file.keys.into_iter().map(|r| record(r, sealer)).collect()
}

fn record(r: Record, sealer: &Sealer) -> Result<ApiKey, String> {
    let bad = |what: &str| format!("key {:?}: {what}", r.name);
    let salt: [u8; 16] = B64
        .decode(&r.salt)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("salt is not 16 base64 bytes"))?;
    let hash: [u8; 32] = B64
        .decode(&r.hash)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("hash is not 32 base64 bytes"))?;
    let secret = match &r.sealed_secret {
        None => None,
        Some(s) => Some(Secret(
            sealer
                .open(&r.key, s)
                .ok_or_else(|| {
                    bad("its sealed secret does not open with api-keys.key (was that file replaced?)")
                })?
                .into(),
        )),
    };
    let rights = r
        .rights
        .iter()
        .map(|x| Right::parse(x).ok_or_else(|| bad(&format!("unknown right {x:?}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if r.key.is_empty() || r.name.is_empty() || r.tenant.is_empty() {
        return Err(bad("empty key id, name or tenant"));
    }
    Ok(ApiKey {
        key: r.key,
        name: r.name,
        salt,
        hash,
        secret,
        tenant: r.tenant,
        rights,
        desc: r.desc,
        created_at: r.created_at,
        expires_at: r.expires_at,
        enabled: r.enabled,
        source: Source::Managed,
        last_used: Arc::new(r.last_used_at.unwrap_or(0).into()),
    })
}
