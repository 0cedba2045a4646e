//! The stock `auth-file` plugin: users with argon2id or bcrypt password hashes (or plain
//! passwords, for tests) from its toml or a referenced file, per-user tenants and
//! superusers, and first-match ACL rules whose topics may use `%u` and `%c`.
//!
//! CONNECT: a user it does not know, or no username, is left to the next auth plugin
//! (`ignore`) after a check against a dummy hash, so that an unknown username costs what
//! a wrong password costs (and the broker answers both with 0x86); a known user with a
//! wrong or missing password is refused with 0x86 (3.1.1: 4). Hashes are checked by the
//! host (`passwords`); when its workers are saturated the CONNECT is refused with 0x88
//! (server unavailable) and the client retries. Publish and subscribe: the first
//! matching rule decides; without a match, `default` does (allow when there are no
//! rules, deny when there are, as in Mosquitto).

mod rules;
mod users;

use std::collections::HashMap;
use std::sync::OnceLock;

use apiary_plugin_sdk::{auth, export, parse_config, InitError, Plugin};
use serde::Deserialize;

use rules::{Permission, Request, Rule};
use users::{Account, User};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    users: Vec<User>,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    default: Option<Permission>,
    #[serde(default)]
    users_file: Option<String>,
}

/// A users file in TOML: the same tables as `[config]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<User>,
    #[serde(default)]
    rules: Vec<Rule>,
}

struct State {
    accounts: HashMap<String, Account>,
    rules: Vec<Rule>,
    default: Permission,
}

static STATE: OnceLock<State> = OnceLock::new();

fn load(c: Config) -> Result<State, String> {
    let mut users = c.users;
    let mut rules = c.rules;
    if let Some(path) = &c.users_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!("users_file {path}: {e} (grant its directory in the toml's [wasi.read_dirs])")
        })?;
        if path.ends_with(".toml") {
            let f: UsersFile =
                toml::from_str(&text).map_err(|e| format!("users_file {path}: {e}"))?;
            users.extend(f.users);
            rules.extend(f.rules);
        } else {
            users.extend(users::parse_lines(&text).map_err(|e| format!("users_file {path}: {e}"))?);
        }
    }
    let accounts = users::accounts(&users)?;
    let plain: Vec<&str> = users
        .iter()
        .filter(|u| u.password.is_some())
        .map(|u| u.username.as_str())
        .collect();
    if !plain.is_empty() {
        apiary_plugin_sdk::warn(&format!(
            "plain-text passwords for {}: use password_hash (apiary passwd) outside tests",
            plain.join(", ")
        ));
    }
    let default = c.default.unwrap_or(if rules.is_empty() {
        Permission::Allow
    } else {
        Permission::Deny
    });
    Ok(State {
        accounts,
        rules,
        default,
    })
}

struct AuthFile;

/// The host's password workers are saturated: refuse as "server unavailable" (0x88),
/// which clients retry, rather than as a wrong password.
fn busy() -> auth::ConnectDecision {
    auth::ConnectDecision::Deny(auth::Denial {
        reason_code: 0x88,
        message: "password checks are saturated; try again".into(),
    })
}

impl Plugin for AuthFile {
    fn init(config: String) -> Result<(), InitError> {
        let c: Config = parse_config(&config)?;
        let state = load(c).map_err(InitError::InvalidConfig)?;
        let _ = STATE.set(state);
        Ok(())
    }
}

fn state() -> &'static State {
    STATE.get().expect("init ran before any call")
}

impl auth::Guest for AuthFile {
    fn authenticate(req: auth::ConnectRequest) -> auth::ConnectDecision {
        let Some(name) = req.username.as_deref() else {
            return auth::ConnectDecision::Ignore;
        };
        let password = req.password.as_deref().unwrap_or_default();
        let Some(acct) = state().accounts.get(name) else {
            // As costly as a known user's check, then left to the next plugin.
            return match users::host_verify(users::DUMMY_HASH, password) {
                Err(users::Busy) => busy(),
                Ok(_) => auth::ConnectDecision::Ignore,
            };
        };
        let ok = match acct.secret.verify(password) {
            Ok(ok) => ok && req.password.is_some(),
            Err(users::Busy) => return busy(),
        };
        if !ok {
            return auth::ConnectDecision::Deny(auth::Denial {
                reason_code: 0x86,
                message: format!("bad username or password for {name}"),
            });
        }
        auth::ConnectDecision::Allow(auth::Identity {
            username: None,
            tenant: acct.tenant.clone(),
            user_id: None,
            superuser: acct.superuser,
        })
    }

    fn authorize(req: auth::AuthorizeRequest) -> auth::AuthorizeDecision {
        let st = state();
        let r = Request {
            publish: matches!(req.action, auth::Action::Publish),
            topic: &req.topic,
            username: req.username.as_deref(),
            client_id: &req.client_id,
        };
        let (permission, why) = match rules::first_match(&st.rules, &r) {
            Some((i, rule)) => (
                rule.permission,
                format!(
                    "rule {} ({:?} {:?} {})",
                    i + 1,
                    rule.permission,
                    rule.action,
                    rule.topic
                )
                .to_lowercase(),
            ),
            None => (st.default, "no rule matched (default)".into()),
        };
        match permission {
            Permission::Allow => auth::AuthorizeDecision::Allow,
            Permission::Deny => auth::AuthorizeDecision::Deny(why),
        }
    }

    fn authenticate_step(_step: auth::AuthStep) -> auth::AuthStepDecision {
        // Passwords only: enhanced methods are left to other plugins.
        auth::AuthStepDecision::Ignore
    }
}

export!(AuthFile: auth);
