//! Who a Beebotte credential is and what it may do. An API key (the broker's key store) is
//! a Beebotte API key + secret key pair for the account that is its tenant; IAM tokens and
//! channel tokens (see `tokens`) carry narrower rights. Every surface (REST, socket.io,
//! MQTT) asks the same questions of an `Account`.

use apiary_plugin_sdk::apikeys::KeyInfo;
use apiary_plugin_sdk::keyauth::{acting_tenant, has_right, Right};

/// The tenant a key for every tenant (`*`) uses as its Beebotte account.
pub const DEFAULT_ACCOUNT: &str = "default";

/// A Beebotte access right, as IAM tokens name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IamRight {
    /// `admin:connection:read`: list connections.
    ConnectionRead,
    /// `admin:connection:write`: drop connections.
    ConnectionWrite,
    /// `data:read`: read records, subscribe.
    DataRead,
    /// `data:write`: publish and write.
    DataWrite,
}

impl IamRight {
    /// Every right, with its Beebotte name.
    pub const ALL: [(IamRight, &'static str); 4] = [
        (IamRight::ConnectionRead, "admin:connection:read"),
        (IamRight::ConnectionWrite, "admin:connection:write"),
        (IamRight::DataRead, "data:read"),
        (IamRight::DataWrite, "data:write"),
    ];

    /// The right a Beebotte name stands for.
    pub fn parse(name: &str) -> Option<IamRight> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(r, _)| *r)
    }
}

/// The channel a channel token is limited to, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelScope {
    /// Channel name.
    pub channel: String,
    /// May subscribe and read.
    pub read: bool,
    /// May publish and write.
    pub write: bool,
}

/// What authenticated a caller, so its connections can be found again (token revocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An API key, by id.
    Key(String),
    /// A token, by id (never the token itself).
    Token(String),
}

impl Credential {
    /// The username the registry records for an MQTT connection with this credential
    /// (never a secret: the client may have sent its secret key as username).
    pub fn username(&self) -> String {
        match self {
            Credential::Key(k) => format!("bbt-key:{k}"),
            Credential::Token(t) => format!("bbt-token:{t}"),
        }
    }

    /// The credential a recorded username stands for; none for other plugins' clients.
    pub fn from_username(u: &str) -> Option<Credential> {
        if let Some(k) = u.strip_prefix("bbt-key:") {
            Some(Credential::Key(k.to_string()))
        } else {
            u.strip_prefix("bbt-token:")
                .map(|t| Credential::Token(t.to_string()))
        }
    }
}

/// An authenticated caller: its account (tenant) and rights.
#[derive(Debug, Clone)]
pub struct Account {
    /// The tenant that is the Beebotte account.
    pub tenant: String,
    /// How it authenticated.
    pub credential: Credential,
    /// Rights over the whole account.
    pub rights: Vec<IamRight>,
    /// A channel token's channel (rights then apply to that channel only).
    pub scope: Option<ChannelScope>,
    /// An API key with the `admin` right: may manage tokens.
    pub admin: bool,
}

impl Account {
    /// The account of a broker API key: connection rights from its
    /// `connections:read/write`, data writes from `publish`; any key reads data.
    pub fn of_key(k: &KeyInfo) -> Account {
        let mut rights = vec![IamRight::DataRead];
        for (r, have) in [
            (IamRight::ConnectionRead, Right::ConnectionsRead),
            (IamRight::ConnectionWrite, Right::ConnectionsWrite),
            (IamRight::DataWrite, Right::Publish),
        ] {
            if has_right(k, have) {
                rights.push(r);
            }
        }
        Account {
            tenant: acting_tenant(k, DEFAULT_ACCOUNT),
            credential: Credential::Key(k.key.clone()),
            rights,
            scope: None,
            admin: has_right(k, Right::Admin),
        }
    }

    /// Whether it holds an account-wide right.
    pub fn may(&self, r: IamRight) -> bool {
        self.rights.contains(&r)
    }

    /// Whether it may read (subscribe to) `channel`.
    pub fn may_read(&self, channel: &str) -> bool {
        match &self.scope {
            Some(s) => s.read && s.channel == channel,
            None => self.may(IamRight::DataRead),
        }
    }

    /// Whether it may publish or write to `channel`.
    pub fn may_write(&self, channel: &str) -> bool {
        match &self.scope {
            Some(s) => s.write && s.channel == channel,
            None => self.may(IamRight::DataWrite),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rights: &[&str], tenant: &str) -> KeyInfo {
        KeyInfo {
            key: "k".into(),
            tenant: tenant.into(),
            rights: rights.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn key_rights_map_to_beebotte_rights() {
        let ro = Account::of_key(&key(&["connections:read"], "acme"));
        assert_eq!(ro.tenant, "acme");
        assert!(ro.may(IamRight::ConnectionRead) && !ro.may(IamRight::ConnectionWrite));
        assert!(ro.may_read("c") && !ro.may_write("c"));
        let admin = Account::of_key(&key(&["admin"], "*"));
        assert_eq!(admin.tenant, DEFAULT_ACCOUNT);
        assert!(IamRight::ALL.iter().all(|(r, _)| admin.may(*r)));
    }

    #[test]
    fn channel_scope_limits_to_its_channel() {
        let a = Account {
            tenant: "t".into(),
            credential: Credential::Token("id".into()),
            rights: vec![IamRight::DataRead],
            scope: Some(ChannelScope {
                channel: "c".into(),
                read: true,
                write: false,
            }),
            admin: false,
        };
        assert!(a.may_read("c") && !a.may_read("d") && !a.may_write("c"));
    }

    #[test]
    fn usernames_round_trip_and_ignore_others() {
        for c in [Credential::Key("k1".into()), Credential::Token("t1".into())] {
            assert_eq!(Credential::from_username(&c.username()), Some(c));
        }
        assert_eq!(Credential::from_username("alice"), None);
    }
}
