//! The authentication chain over the `auth` role of the plugin runtime: auth plugins in
//! priority order, the first that does not `ignore` decides. When all ignore, a client
//! that gave a username is refused as for a wrong password (0x86, so a refusal never
//! tells whether a username exists), and one without is anonymous: `allow_anonymous`
//! decides. A plugin that fails (trap, timeout, busy, backing off) refuses with 0x88
//! (server unavailable, which clients retry): auth never fails open. A tenant a plugin
//! returns must be one its toml grants.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rmqtt_codec::v3::ConnectAckReason;

use crate::broker::Broker;
use crate::mqtt::ConnectInfo;
use crate::plugins::bindings::exports::apiary::plugin::auth as wit;
use crate::plugins::runtime::LoadedPlugin;
use crate::session::Transport;

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

/// The 3.1.1 CONNACK return code for an MQTT 5 reason code.
pub fn v3_code(v5: u8) -> ConnectAckReason {
    match v5 {
        0x86 => ConnectAckReason::BadUserNameOrPassword,
        0x85 => ConnectAckReason::IdentifierRejected,
        0x84 => ConnectAckReason::UnacceptableProtocolVersion,
        0x88 | 0x89 => ConnectAckReason::ServiceUnavailable,
        _ => ConnectAckReason::NotAuthorized,
    }
}

/// Runs the chain for one CONNECT.
pub async fn authenticate(
    broker: &Broker,
    req: &ConnectInfo,
    peer: SocketAddr,
    transport: Transport,
) -> Result<Identity, Denied> {
    let m = &broker.metrics;
    let r = decide(broker, req, peer, transport).await;
    match &r {
        Ok(_) => m.auth_allowed.fetch_add(1, Ordering::Relaxed),
        Err(_) => m.auth_denied.fetch_add(1, Ordering::Relaxed),
    };
    r
}

/// What the plugins see of a CONNECT.
pub fn connect_request(
    req: &ConnectInfo,
    peer: SocketAddr,
    transport: Transport,
) -> wit::ConnectRequest {
    wit::ConnectRequest {
        client_id: req.client_id.to_string(),
        username: req.username.as_deref().map(str::to_string),
        password: req.password.as_ref().map(|p| p.to_vec()),
        peer_ip: peer.ip().to_string(),
        peer_port: peer.port(),
        proto_name: req.proto_name.to_string(),
        proto_ver: req.proto_ver,
        listener: transport.listener().to_string(),
        cert_subject: None,
    }
}

/// The identity a plugin returned, once its tenant is one the plugin's toml grants.
fn identity(
    p: &LoadedPlugin,
    id: wit::Identity,
    username: Option<Arc<str>>,
) -> Result<Identity, Denied> {
    let tenant = id.tenant.unwrap_or_else(|| "default".into());
    if !p.ctx.manifest.may_touch(&tenant) {
        return Err(Denied {
            code: 0x87,
            message: format!(
                "{} returned tenant {tenant}, which its toml does not grant",
                p.ctx.name
            ),
        });
    }
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
    connect: &wit::ConnectRequest,
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
    let Some(mgr) = broker.plugins() else {
        return denied(0x8C, format!("no auth plugin supports method {method}"));
    };
    let chain = match &conv {
        Some(c) => match mgr.get(&c.plugin) {
            Some(p) => vec![p],
            None => return denied(0x87, format!("auth plugin {} went away", c.plugin)),
        },
        None => mgr.auth_chain(),
    };
    let state = conv.map(|c| c.state);
    for p in chain {
        let step = wit::AuthStep {
            connect: connect.clone(),
            method: method.to_string(),
            data: data.clone(),
            state: state.clone(),
            reauth,
        };
        let name = &p.ctx.name;
        match p.authenticate_step(mgr.runtime().engine(), step).await {
            Ok(wit::AuthStepDecision::Ignore) => continue,
            Ok(wit::AuthStepDecision::Continue(c)) => {
                return Step::Continue(
                    c.data,
                    Conversation {
                        plugin: name.clone(),
                        state: c.state,
                    },
                )
            }
            Ok(wit::AuthStepDecision::Deny(d)) => {
                return denied(
                    deny_code(d.reason_code),
                    format!("denied by {name}: {}", d.message),
                )
            }
            Ok(wit::AuthStepDecision::Success(s)) => {
                return match identity(&p, s.identity, username) {
                    Ok(id) => {
                        m.auth_allowed.fetch_add(1, Ordering::Relaxed);
                        Step::Success(id, s.data)
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

async fn decide(
    broker: &Broker,
    req: &ConnectInfo,
    peer: SocketAddr,
    transport: Transport,
) -> Result<Identity, Denied> {
    let username: Option<Arc<str>> = req.username.as_deref().map(Arc::from);
    let mut asked = false;
    if let Some(mgr) = broker.plugins() {
        let chain = mgr.auth_chain();
        if !chain.is_empty() {
            asked = true;
            let wreq = connect_request(req, peer, transport);
            for p in chain {
                let name = &p.ctx.name;
                match p.authenticate(mgr.runtime().engine(), wreq.clone()).await {
                    Ok(wit::ConnectDecision::Ignore) => continue,
                    Ok(wit::ConnectDecision::Deny(d)) => {
                        return Err(Denied {
                            code: deny_code(d.reason_code),
                            message: format!("denied by {name}: {}", d.message),
                        })
                    }
                    Ok(wit::ConnectDecision::Allow(id)) => return identity(&p, id, username),
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
    let anonymous = broker.config.auth.allow_anonymous;
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
