//! MQTT (the `auth` role): the CONNECT modes of the SDK (secret key as username, key +
//! signature, IAM/channel/legacy tokens) and what such clients may publish and subscribe.
//! Other usernames are left to the next auth plugin. A Beebotte client's registry username
//! names its credential (`bbt-key:<id>`, `bbt-token:<id>`), never a secret, and its user id
//! is its client id, as Beebotte's connection listing shows.

use apiary_plugin_sdk::apikeys::{self, MacAlgorithm};
use apiary_plugin_sdk::auth::{
    Action, AuthorizeDecision, AuthorizeRequest, ConnectDecision, ConnectRequest, Denial, Identity,
};
use apiary_plugin_sdk::types;
use base64::Engine;

use crate::account::{Account, Credential};
use crate::tokens;
use crate::wire::{split_topic, valid_channel, valid_resource};

/// MQTT 5 reason codes (the broker maps them to 3.1.1's 4 and 3).
const BAD_CREDENTIALS: u8 = 0x86;
const UNAVAILABLE: u8 = 0x88;

fn deny(code: u8, message: impl Into<String>) -> ConnectDecision {
    ConnectDecision::Deny(Denial {
        reason_code: code,
        message: message.into(),
    })
}

fn allow(acc: &Account, client_id: &str) -> ConnectDecision {
    ConnectDecision::Allow(Identity {
        tenant: Some(acc.tenant.clone()),
        user_id: (!client_id.is_empty()).then(|| client_id.to_string()),
        username: Some(acc.credential.username()),
        superuser: false,
    })
}

/// The token in a username: `iamtkn_...`, `token_...`, or legacy `token:<token>`.
fn token_of(username: &str) -> Option<&str> {
    if let Some(t) = username.strip_prefix("token:") {
        Some(t)
    } else if username.starts_with("iamtkn_") || username.starts_with("token_") {
        Some(username)
    } else {
        None
    }
}

fn host_denial(e: types::Error) -> ConnectDecision {
    deny(
        UNAVAILABLE,
        format!("cannot check the credential now: {e:?}"),
    )
}

/// Decides a CONNECT with Beebotte credentials; ignores any other.
pub fn authenticate(req: &ConnectRequest) -> ConnectDecision {
    let Some(user) = req.username.as_deref().filter(|u| !u.is_empty()) else {
        return ConnectDecision::Ignore;
    };
    // The SDK sends a present but empty password; docs allow the username repeated.
    let pw = req
        .password
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let plain = pw.as_deref().is_none_or(|p| p == user);
    if let Some(t) = token_of(user) {
        if !plain {
            return deny(BAD_CREDENTIALS, "a token's password is empty");
        }
        return match tokens::find(t) {
            Ok(Some(tok)) => allow(&tok.account(), &req.client_id),
            Ok(None) => deny(BAD_CREDENTIALS, "unknown token"),
            Err(e) => host_denial(e),
        };
    }
    if let Some(p) = pw.as_deref().filter(|_| !plain) {
        return signature(user, p, &req.client_id);
    }
    match apikeys::verify_secret(user) {
        Ok(Some(k)) => allow(&Account::of_key(&k), &req.client_id),
        Ok(None) => ConnectDecision::Ignore,
        Err(e) => host_denial(e),
    }
}

/// Signature mode: username = API key, password = `<name>:<base64 HMAC-SHA1(secret, name)>`.
fn signature(key: &str, password: &str, client_id: &str) -> ConnectDecision {
    let parsed = password.rsplit_once(':').and_then(|(name, sig)| {
        let sig = base64::engine::general_purpose::STANDARD.decode(sig).ok()?;
        Some((name, sig))
    });
    let Some((name, sig)) = parsed else {
        return ConnectDecision::Ignore;
    };
    match apikeys::verify_mac(key, MacAlgorithm::HmacSha1, name.as_bytes(), &sig) {
        Ok(Some(k)) => allow(&Account::of_key(&k), client_id),
        // A known key with a wrong signature is refused here; an unknown username is
        // somebody else's user.
        Ok(None) => match apikeys::lookup(key) {
            Ok(Some(_)) => deny(BAD_CREDENTIALS, "bad signature"),
            Ok(None) => ConnectDecision::Ignore,
            Err(e) => host_denial(e),
        },
        Err(e) => host_denial(e),
    }
}

/// The account behind a recorded credential, as it is now (a revoked one has none).
fn account(tenant: &str, c: &Credential) -> Result<Option<Account>, types::Error> {
    Ok(match c {
        Credential::Key(k) => apikeys::lookup(k)?.map(|k| Account::of_key(&k)),
        Credential::Token(id) => tokens::by_id(tenant, id)?.map(|t| t.account()),
    })
}

/// Whether a Beebotte client may publish to `topic` (two levels, `channel/resource`)
/// or subscribe to `filter` (`channel/resource`, `channel/+` or `channel/#`).
pub fn authorize(req: &AuthorizeRequest) -> AuthorizeDecision {
    let Some(cred) = req.username.as_deref().and_then(Credential::from_username) else {
        return AuthorizeDecision::Ignore;
    };
    let acc = match account(&req.tenant, &cred) {
        Ok(Some(a)) if a.tenant == req.tenant => a,
        Ok(_) => return AuthorizeDecision::Deny("credential revoked".into()),
        Err(e) => return AuthorizeDecision::Deny(format!("cannot check the credential: {e:?}")),
    };
    let channel = match req.action {
        Action::Publish => match split_topic(&req.topic) {
            Some((c, r)) if valid_channel(c) && valid_resource(r) => c,
            _ => return AuthorizeDecision::Deny("Beebotte topics are <channel>/<resource>".into()),
        },
        Action::Subscribe => match req.topic.split_once('/') {
            Some((c, r)) if valid_channel(c) && (r == "+" || r == "#" || valid_resource(r)) => c,
            _ => {
                return AuthorizeDecision::Deny(
                    "Beebotte filters are <channel>/<resource>, <channel>/+ or <channel>/#".into(),
                )
            }
        },
    };
    let ok = match req.action {
        Action::Publish => acc.may_write(channel),
        Action::Subscribe => acc.may_read(channel),
    };
    if ok {
        AuthorizeDecision::Allow
    } else {
        AuthorizeDecision::Deny(format!("no access to channel {channel}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_usernames() {
        assert_eq!(token_of("token:abc"), Some("abc"));
        assert_eq!(token_of("iamtkn_x"), Some("iamtkn_x"));
        assert_eq!(token_of("token_x"), Some("token_x"));
        assert_eq!(token_of("alice"), None);
    }
}
