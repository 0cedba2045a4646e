//! Users and their passwords: argon2id and bcrypt PHC strings (checked by the host,
//! natively, through the `passwords` interface), or plain text for tests.

use std::collections::HashMap;

use serde::Deserialize;

/// One `[[config.users]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// MQTT username.
    pub username: String,
    /// PHC string: `$argon2id$...` or `$2b$...` (bcrypt).
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Plain password (accepted with a warning, for tests).
    #[serde(default)]
    pub password: Option<String>,
    /// Tenant the user's sessions live in.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Skips ACL checks.
    #[serde(default)]
    pub superuser: bool,
}

/// How a user's password is checked.
#[derive(Debug, Clone)]
pub enum Secret {
    /// Argon2 (any variant the PHC string names).
    Argon2(String),
    /// bcrypt ($2a$, $2b$, $2y$).
    Bcrypt(String),
    /// Plain text.
    Plain(String),
}

impl Secret {
    /// Parses a user's password fields.
    pub fn of(u: &User) -> Result<Self, String> {
        match (&u.password_hash, &u.password) {
            (Some(h), None) => Self::from_hash(h).map_err(|e| format!("user {}: {e}", u.username)),
            (None, Some(p)) => Ok(Secret::Plain(p.clone())),
            _ => Err(format!(
                "user {}: give exactly one of password_hash and password",
                u.username
            )),
        }
    }

    fn from_hash(h: &str) -> Result<Self, String> {
        if h.starts_with("$argon2") {
            let ph = argon2::PasswordHash::new(h).map_err(|e| format!("bad argon2 hash: {e}"))?;
            if ph.hash.is_none() || ph.salt.is_none() {
                return Err("argon2 hash without salt or hash".into());
            }
            Ok(Secret::Argon2(h.to_string()))
        } else if h.starts_with("$2a$") || h.starts_with("$2b$") || h.starts_with("$2y$") {
            Ok(Secret::Bcrypt(h.to_string()))
        } else {
            Err(
                "password_hash must be an argon2 ($argon2id$...) or bcrypt ($2b$...) PHC string"
                    .into(),
            )
        }
    }

    /// Whether `password` is right; Err when the host's password workers are saturated.
    pub fn verify(&self, password: &[u8]) -> Result<bool, Busy> {
        match self {
            Secret::Argon2(h) | Secret::Bcrypt(h) => host_verify(h, password),
            Secret::Plain(p) => {
                let p = p.as_bytes();
                Ok(p.len() == password.len()
                    && p.iter().zip(password).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0)
            }
        }
    }
}

/// The host could not check a password now (its workers stayed busy).
#[derive(Debug)]
pub struct Busy;

/// An argon2id hash (default cost) of a password no user has: checked for unknown
/// usernames, so that they cost what a known user with a wrong password costs.
pub const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$7VYAEqDtv7Ori+0YNUe9IQ$ZXjLPqkJS5ALaPb2WaPcfJJ+GA1frQBYoduTQaj7sd4";

/// Checks a PHC hash with the host's native pool.
pub fn host_verify(hash: &str, password: &[u8]) -> Result<bool, Busy> {
    use apiary_plugin_sdk::{passwords, types};
    match passwords::verify(hash, password) {
        Ok(ok) => Ok(ok),
        Err(types::Error::Unavailable(_)) => Err(Busy),
        // A hash that parsed at init but not in the host, or a missing grant: refuse.
        Err(e) => {
            apiary_plugin_sdk::warn(&format!("password check failed: {e:?}"));
            Ok(false)
        }
    }
}

/// A user ready to check.
#[derive(Debug, Clone)]
pub struct Account {
    /// Password check.
    pub secret: Secret,
    /// Tenant.
    pub tenant: Option<String>,
    /// Superuser.
    pub superuser: bool,
}

/// Builds the user table; a username given twice is an error (which one would win?).
pub fn accounts(users: &[User]) -> Result<HashMap<String, Account>, String> {
    let mut out = HashMap::new();
    for u in users {
        let a = Account {
            secret: Secret::of(u)?,
            tenant: u.tenant.clone(),
            superuser: u.superuser,
        };
        if out.insert(u.username.clone(), a).is_some() {
            return Err(format!("user {} is defined twice", u.username));
        }
    }
    Ok(out)
}

/// `username:PHC` lines (Mosquitto/htpasswd style; `#` comments and blank lines skipped).
pub fn parse_lines(text: &str) -> Result<Vec<User>, String> {
    let mut v = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, hash)) = line.split_once(':') else {
            return Err(format!("line {}: expected username:hash", i + 1));
        };
        v.push(User {
            username: name.to_string(),
            password_hash: Some(hash.to_string()),
            password: None,
            tenant: None,
            superuser: false,
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(hash: Option<&str>, plain: Option<&str>) -> User {
        User {
            username: "u".into(),
            password_hash: hash.map(Into::into),
            password: plain.map(Into::into),
            tenant: None,
            superuser: false,
        }
    }

    #[test]
    fn hashes_are_recognised_at_init() {
        assert!(matches!(
            Secret::of(&user(Some(DUMMY_HASH), None)).unwrap(),
            Secret::Argon2(_)
        ));
        let b = "$2b$04$MDEyMzQ1Njc4OWFiY2RlZeLS0MXTsn9zhdBhjbXjj6M8sSTtSuqei";
        assert!(matches!(
            Secret::of(&user(Some(b), None)).unwrap(),
            Secret::Bcrypt(_)
        ));
        let s = Secret::of(&user(None, Some("pw"))).unwrap();
        assert!(s.verify(b"pw").unwrap() && !s.verify(b"p").unwrap());
    }

    #[test]
    fn bad_entries_are_errors() {
        assert!(Secret::of(&user(Some("md5:abc"), None)).is_err());
        assert!(Secret::of(&user(Some("$argon2id$garbage"), None)).is_err());
        assert!(Secret::of(&user(None, None)).is_err());
        assert!(Secret::of(&user(Some("$2b$x"), Some("pw"))).is_err());
        let twice = vec![user(None, Some("a")), user(None, Some("b"))];
        assert!(accounts(&twice).unwrap_err().contains("twice"));
        assert!(parse_lines("alice\n").is_err());
        let v = parse_lines("# c\n\nalice:$2b$04$abc\n").unwrap();
        assert_eq!(v[0].username, "alice");
    }
}
