//! IAM tokens (`iamtkn_...`, account-wide rights such as `admin:connection:read`) and
//! channel tokens (`token_...`, one channel, read and/or write). The plugin's kv keeps only
//! the SHA-256 of a token (tokens are random, so a fast hash suffices, as for API keys); the
//! token itself is shown once, when created.

use apiary_plugin_sdk::{clock, kv, types};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::account::{Account, ChannelScope, Credential, IamRight};

/// kv prefix: token hash → record.
const BY_HASH: &str = "tok/";
/// kv prefix: `<tenant>/<id>` → token hash (listing and revoking by id).
const BY_ID: &str = "tokid/";
/// Most tokens listed for one account.
pub const MAX_LISTED: u32 = 10_000;

/// Which kind of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `iamtkn_...`: account-wide rights.
    Iam,
    /// `token_...`: one channel.
    Channel,
}

/// A token as stored (without the token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    /// Public id, for listing and revoking.
    pub id: String,
    /// The account.
    pub tenant: String,
    /// IAM or channel token.
    pub kind: Kind,
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// IAM rights, by their Beebotte names.
    #[serde(default)]
    pub acl: Vec<String>,
    /// A channel token's channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// A channel token's read access.
    #[serde(default)]
    pub read: bool,
    /// A channel token's write access.
    #[serde(default)]
    pub write: bool,
    /// Creation, Unix ms.
    pub created_ms: i64,
}

impl Token {
    /// The account this token acts as.
    pub fn account(&self) -> Account {
        let mut rights: Vec<IamRight> =
            self.acl.iter().filter_map(|a| IamRight::parse(a)).collect();
        let scope = self.channel.clone().map(|channel| {
            rights = Vec::new();
            if self.read {
                rights.push(IamRight::DataRead);
            }
            if self.write {
                rights.push(IamRight::DataWrite);
            }
            ChannelScope {
                channel,
                read: self.read,
                write: self.write,
            }
        });
        Account {
            tenant: self.tenant.clone(),
            credential: Credential::Token(self.id.clone()),
            rights,
            scope,
            admin: false,
        }
    }
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Random URL-safe text from `n` bytes; none without an entropy source.
pub fn random(n: usize) -> Option<String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// The kv prefix of an account's token ids (the tenant escaped: `/` would let one
/// account's prefix cover another's).
fn id_prefix(tenant: &str) -> String {
    format!("{BY_ID}{}/", crate::records::segment(tenant))
}

/// The token a client presented (`token:` legacy prefix already removed), if it exists.
pub fn find(token: &str) -> Result<Option<Token>, types::Error> {
    if token.is_empty() || token.len() > 256 {
        return Ok(None);
    }
    let Some(v) = kv::get(&format!("{BY_HASH}{}", hash(token)))? else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(&v).ok())
}

/// What a new token is for.
pub struct NewToken {
    /// IAM or channel.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// IAM rights (validated by the caller).
    pub acl: Vec<String>,
    /// Channel, read, write of a channel token.
    pub channel: Option<(String, bool, bool)>,
}

/// Creates a token for `tenant`; returns the token (shown once) and its record.
pub fn create(tenant: &str, n: NewToken) -> Result<(String, Token), types::Error> {
    let (Some(secret), Some(id)) = (random(24), random(9)) else {
        return Err(types::Error::Unavailable("no entropy source".into()));
    };
    let prefix = match n.kind {
        Kind::Iam => "iamtkn_",
        Kind::Channel => "token_",
    };
    let token = format!("{prefix}{secret}");
    let (channel, read, write) = match n.channel {
        Some((c, r, w)) => (Some(c), r, w),
        None => (None, false, false),
    };
    let t = Token {
        id,
        tenant: tenant.to_string(),
        kind: n.kind,
        name: n.name,
        acl: n.acl,
        channel,
        read,
        write,
        created_ms: clock::now_ms(),
    };
    let h = hash(&token);
    let body = serde_json::to_vec(&t).expect("a token record serializes");
    kv::set(&format!("{BY_HASH}{h}"), &body)?;
    kv::set(&format!("{}{}", id_prefix(tenant), t.id), h.as_bytes())?;
    Ok((token, t))
}

/// The account's tokens.
pub fn list(tenant: &str) -> Result<Vec<Token>, types::Error> {
    let prefix = id_prefix(tenant);
    let mut out = Vec::new();
    for k in kv::list_keys(&prefix, MAX_LISTED)? {
        let Some(h) = kv::get(&k)? else { continue };
        let h = String::from_utf8_lossy(&h);
        if let Some(v) = kv::get(&format!("{BY_HASH}{h}"))? {
            out.extend(
                serde_json::from_slice::<Token>(&v)
                    .ok()
                    .filter(|t| t.tenant == tenant),
            );
        }
    }
    Ok(out)
}

/// The kv keys of an account's token by id (id → hash, hash → record), if the id exists.
fn keys_of(tenant: &str, id: &str) -> Result<Option<(String, String)>, types::Error> {
    if id.contains('/') {
        return Ok(None);
    }
    let idkey = format!("{}{id}", id_prefix(tenant));
    Ok(kv::get(&idkey)?.map(|h| {
        let hkey = format!("{BY_HASH}{}", String::from_utf8_lossy(&h));
        (idkey, hkey)
    }))
}

/// A token of the account by id.
pub fn by_id(tenant: &str, id: &str) -> Result<Option<Token>, types::Error> {
    let Some((_, hkey)) = keys_of(tenant, id)? else {
        return Ok(None);
    };
    Ok(kv::get(&hkey)?
        .and_then(|v| serde_json::from_slice::<Token>(&v).ok())
        .filter(|t| t.tenant == tenant))
}

/// Revokes a token of the account by id; returns whether the id existed.
pub fn revoke(tenant: &str, id: &str) -> Result<bool, types::Error> {
    let Some((idkey, hkey)) = keys_of(tenant, id)? else {
        return Ok(false);
    };
    kv::delete(&hkey)?;
    kv::delete(&idkey)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_token_rights_come_from_its_flags() {
        let t = Token {
            id: "i".into(),
            tenant: "t".into(),
            kind: Kind::Channel,
            name: String::new(),
            acl: vec!["admin:connection:write".into()],
            channel: Some("c".into()),
            read: true,
            write: false,
            created_ms: 0,
        };
        let a = t.account();
        assert!(a.may_read("c") && !a.may_write("c"));
        assert!(
            !a.may(IamRight::ConnectionWrite),
            "a channel token has no admin rights"
        );
    }

    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(hash("abc").len(), 64);
        assert!(hash("abc").starts_with("ba7816bf"));
    }
}
