//! The authentication chain: [`Authenticator`]s (the plugin runtime's auth plugins) in
//! priority order, the first that does not `ignore` decides. When all ignore, a client
//! that gave a username is refused as for a wrong password (0x86, so a refusal never
//! tells whether a username exists), and one without is anonymous: `allow_anonymous`
//! decides. A plugin that fails (trap, timeout, busy, backing off) refuses with 0x88
//! (server unavailable, which clients retry): auth never fails open. A tenant a plugin
//! returns must be one its toml grants.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::broker::Broker;
use crate::BoxFuture;

/// What an authenticator sees of a connection attempt, whatever its protocol.
#[derive(Debug, Clone)]
pub struct ConnectAttempt {
    /// Client id.
    pub client_id: String,
    /// Username.
    pub username: Option<String>,
    /// Password bytes.
    pub password: Option<Vec<u8>>,
    /// Peer address.
    pub peer: SocketAddr,
    /// Protocol name ("MQTT", "MQIsdp").
    pub proto_name: String,
    /// Protocol version.
    pub proto_ver: u8,
    /// Listener name as EMQX shows it ("tcp:default").
    pub listener: String,
    /// Subject of the TLS client certificate, if one was presented.
    pub cert_subject: Option<String>,
}

/// Who an authenticator says a client is.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    /// Tenant (None: "default").
    pub tenant: Option<String>,
    /// User id (None: the username).
    pub user_id: Option<String>,
    /// Username recorded instead of the CONNECT's (None: the CONNECT's).
    pub username: Option<String>,
    /// Skips ACL checks.
    pub superuser: bool,
}

/// An authenticator's answer to a CONNECT.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Accepted as this identity.
    Allow(Claim),
    /// Refused with an MQTT 5 reason code and a message for the log.
    Deny(u8, String),
    /// No opinion: the next one decides.
    Ignore,
}

/// An authenticator's answer to one step of enhanced authentication.
#[derive(Debug, Clone)]
pub enum StepVerdict {
    /// Accepted, with data for the closing packet.
    Success(Claim, Option<Vec<u8>>),
    /// Another round: data for the client, state to get back.
    Continue(Vec<u8>, Vec<u8>),
    /// Refused (reason code, message).
    Deny(u8, String),
    /// It does not handle the method.
    Ignore,
}

/// An authenticator's answer to a publish or subscribe.
#[derive(Debug, Clone)]
pub enum AclVerdict {
    /// Allowed.
    Allow,
    /// Refused by the named rule.
    Deny(String),
    /// No opinion.
    Ignore,
}

/// One member of the auth chain. The plugin runtime implements it for auth plugins; the
/// chain's rules (order, ignore, failure refuses, anonymous access) live here. An `Err`
/// is a failure of the authenticator itself (trap, timeout, busy), never a decision.
pub trait Authenticator: Send + Sync {
    /// Its name, for logs and to find it again mid-conversation.
    fn name(&self) -> &str;
    /// Whether it may put clients in `tenant`.
    fn may_grant(&self, tenant: &str) -> bool;
    /// Decides a CONNECT.
    fn authenticate<'a>(&'a self, c: &'a ConnectAttempt) -> BoxFuture<'a, Result<Verdict, String>>;
    /// Decides a step of enhanced authentication.
    fn step<'a>(
        &'a self,
        c: &'a ConnectAttempt,
        method: &'a str,
        data: Option<Vec<u8>>,
        state: Option<Vec<u8>>,
        reauth: bool,
    ) -> BoxFuture<'a, Result<StepVerdict, String>>;
    /// Decides a publish or subscribe.
    fn authorize<'a>(
        &'a self,
        who: &'a Identity,
        client_id: &'a str,
        ask: Ask<'a>,
    ) -> BoxFuture<'a, Result<AclVerdict, String>>;
}

/// The ordered chain of authenticators (the plugin manager's auth plugins).
pub trait AuthChain: Send + Sync {
    /// Every authenticator, in priority order.
    fn chain(&self) -> Vec<Arc<dyn Authenticator>>;
    /// One by name.
    fn get(&self, name: &str) -> Option<Arc<dyn Authenticator>>;
}

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH to a topic (or a will to be published).
    Publish,
    /// SUBSCRIBE to a filter.
    Subscribe,
}

impl Action {
    /// The action's name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        }
    }
}

/// One action to authorise.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Publish or subscribe.
    pub action: Action,
    /// Topic (publish) or filter (subscribe).
    pub topic: &'a str,
    /// QoS asked for.
    pub qos: u8,
    /// Retain flag (publish).
    pub retain: bool,
}

/// Who an accepted client is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Tenant the session lives in.
    pub tenant: Arc<str>,
    /// Username from CONNECT.
    pub username: Option<Arc<str>>,
    /// User id for the registry (default: the username).
    pub user_id: Option<Arc<str>>,
    /// Skips ACL checks.
    pub superuser: bool,
}

/// A refusal, with the MQTT 5 reason code and a message for the log.
#[derive(Debug, Clone)]
pub struct Denied {
    /// MQTT 5 CONNACK reason code.
    pub code: u8,
    /// Why (logged, and sent as the v5 reason string).
    pub message: String,
}

/// Runs the chain for one CONNECT.
pub async fn authenticate(broker: &Broker, req: &ConnectAttempt) -> Result<Identity, Denied> {
    let m = &broker.metrics;
    let r = decide(broker, req).await;
    match &r {
        Ok(_) => m.auth_allowed.fetch_add(1, Ordering::Relaxed),
        Err(_) => m.auth_denied.fetch_add(1, Ordering::Relaxed),
    };
    r
}

/// The identity an authenticator returned, once its tenant is one it may grant.
fn identity(
    a: &dyn Authenticator,
    id: Claim,
    username: Option<Arc<str>>,
) -> Result<Identity, Denied> {
    let tenant = id.tenant.unwrap_or_else(|| "default".into());
    if !a.may_grant(&tenant) {
        return Err(Denied {
            code: 0x87,
            message: format!(
                "{} returned tenant {tenant}, which its toml does not grant",
                a.name()
            ),
        });
    }
    let username = id.username.map(Arc::from).or(username);
    Ok(Identity {
        tenant: tenant.into(),
        user_id: id.user_id.map(Arc::from).or_else(|| username.clone()),
        username,
        superuser: id.superuser,
    })
}

fn deny_code(code: u8) -> u8 {
    if code >= 0x80 {
        code
    } else {
        0x87
    }
}

/// An enhanced-authentication exchange in progress: the plugin that owns it and the
/// state it asked to get back.
#[derive(Debug, Clone)]
pub struct Conversation {
    plugin: String,
    state: Vec<u8>,
}

/// The outcome of one step of enhanced authentication.
#[derive(Debug)]
pub enum Step {
    /// Accepted, with data for the closing CONNACK or AUTH.
    Success(Identity, Option<Vec<u8>>),
    /// Send AUTH (continue) with this data and wait for the client's answer.
    Continue(Vec<u8>, Conversation),
    /// Refused.
    Denied(Denied),
}

/// Runs one step of MQTT 5 enhanced authentication: the first step goes down the chain
/// until a plugin takes the method (none: 0x8C bad authentication method); later steps
/// go to the plugin that took it.
pub async fn enhanced_step(
    broker: &Broker,
    connect: &ConnectAttempt,
    method: &str,
    data: Option<Vec<u8>>,
    conv: Option<Conversation>,
    reauth: bool,
) -> Step {
    let m = &broker.metrics;
    let username: Option<Arc<str>> = connect.username.as_deref().map(Arc::from);
    let denied = |code: u8, message: String| {
        m.auth_denied.fetch_add(1, Ordering::Relaxed);
        Step::Denied(Denied { code, message })
    };
    let Some(auth) = broker.auth_chain() else {
        return denied(0x8C, format!("no auth plugin supports method {method}"));
    };
    let chain = match &conv {
        Some(c) => match auth.get(&c.plugin) {
            Some(p) => vec![p],
            None => return denied(0x87, format!("auth plugin {} went away", c.plugin)),
        },
        None => auth.chain(),
    };
    let state = conv.map(|c| c.state);
    for p in chain {
        let name = p.name();
        match p
            .step(connect, method, data.clone(), state.clone(), reauth)
            .await
        {
            Ok(StepVerdict::Ignore) => continue,
            Ok(StepVerdict::Continue(data, state)) => {
                return Step::Continue(
                    data,
                    Conversation {
                        plugin: name.to_string(),
                        state,
                    },
                )
            }
            Ok(StepVerdict::Deny(code, message)) => {
                return denied(deny_code(code), format!("denied by {name}: {message}"))
            }
            Ok(StepVerdict::Success(claim, data)) => {
                return match identity(&*p, claim, username) {
                    Ok(id) => {
                        m.auth_allowed.fetch_add(1, Ordering::Relaxed);
                        Step::Success(id, data)
                    }
                    Err(d) => denied(d.code, d.message),
                }
            }
            Err(e) => {
                m.auth_failed.fetch_add(1, Ordering::Relaxed);
                return denied(
                    UNAVAILABLE,
                    format!("auth plugin {name} failed ({e}); refused"),
                );
            }
        }
    }
    denied(0x8C, format!("no auth plugin supports method {method}"))
}

async fn decide(broker: &Broker, req: &ConnectAttempt) -> Result<Identity, Denied> {
    let username: Option<Arc<str>> = req.username.as_deref().map(Arc::from);
    let peer = req.peer;
    let mut asked = false;
    if let Some(auth) = broker.auth_chain() {
        let chain = auth.chain();
        if !chain.is_empty() {
            asked = true;
            for p in chain {
                let name = p.name();
                match p.authenticate(req).await {
                    Ok(Verdict::Ignore) => continue,
                    Ok(Verdict::Deny(code, message)) => {
                        return Err(Denied {
                            code: deny_code(code),
                            message: format!("denied by {name}: {message}"),
                        })
                    }
                    Ok(Verdict::Allow(id)) => return identity(&*p, id, username),
                    Err(e) => {
                        broker.metrics.auth_failed.fetch_add(1, Ordering::Relaxed);
                        return Err(Denied {
                            code: UNAVAILABLE,
                            message: format!("auth plugin {name} failed ({e}); refused"),
                        });
                    }
                }
            }
        }
    }
    if asked && username.is_some() {
        // Nobody knows this user: the answer a wrong password gets, so that a refusal
        // does not tell whether a username exists.
        return Err(Denied {
            code: 0x86,
            message: "bad username or password (no auth plugin accepted this username)".into(),
        });
    }
    let anonymous = broker.config().auth.allow_anonymous;
    if anonymous.allows(peer.ip()) {
        Ok(Identity {
            tenant: "default".into(),
            user_id: username.clone(),
            username,
            superuser: false,
        })
    } else {
        Err(Denied {
            code: 0x87,
            message: match anonymous {
                crate::config::Anonymous::Loopback => {
                    "anonymous clients are accepted from loopback only ([auth] allow_anonymous = \"loopback\")".into()
                }
                _ => "no auth plugin accepted the client and anonymous access is disabled".into(),
            },
        })
    }
}

/// CONNACK reason for a refusal the client did not cause (a plugin failed, is busy or
/// backing off): 0x88 Server unavailable, 3.1.1 return code 3; clients retry it.
const UNAVAILABLE: u8 = 0x88;
