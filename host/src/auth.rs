//! The authentication chain over the `auth` role of the plugin runtime: auth plugins in
//! priority order, the first that does not `ignore` decides; when all ignore,
//! `allow_anonymous` does. A plugin that fails (trap, timeout, backing off) denies: auth
//! never fails open. A tenant a plugin returns must be one its toml grants.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rmqtt_codec::v3::ConnectAckReason;

use crate::broker::Broker;
use crate::mqtt::ConnectInfo;
use crate::plugins::bindings::exports::apiary::plugin::auth as wit;
use crate::session::Transport;

/// Who an accepted client is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Tenant the session lives in.
    pub tenant: Arc<str>,
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

async fn decide(
    broker: &Broker,
    req: &ConnectInfo,
    peer: SocketAddr,
    transport: Transport,
) -> Result<Identity, Denied> {
    let username: Option<Arc<str>> = req.username.as_deref().map(Arc::from);
    if let Some(mgr) = broker.plugins() {
        let chain = mgr.auth_chain();
        if !chain.is_empty() {
            let wreq = wit::ConnectRequest {
                client_id: req.client_id.to_string(),
                username: req.username.as_deref().map(str::to_string),
                password: req.password.as_ref().map(|p| p.to_vec()),
                peer_ip: peer.ip().to_string(),
                peer_port: peer.port(),
                proto_name: req.proto_name.to_string(),
                proto_ver: req.proto_ver,
                listener: transport.listener().to_string(),
                cert_subject: None,
            };
            for p in chain {
                let name = &p.ctx.name;
                match p.authenticate(mgr.runtime().engine(), wreq.clone()).await {
                    Ok(wit::ConnectDecision::Ignore) => continue,
                    Ok(wit::ConnectDecision::Deny(d)) => {
                        return Err(Denied {
                            code: if d.reason_code >= 0x80 {
                                d.reason_code
                            } else {
                                0x87
                            },
                            message: format!("denied by {name}: {}", d.message),
                        })
                    }
                    Ok(wit::ConnectDecision::Allow(id)) => {
                        let tenant = id.tenant.unwrap_or_else(|| "default".into());
                        if !p.ctx.manifest.may_touch(&tenant) {
                            return Err(Denied {
                                code: 0x87,
                                message: format!("{name} returned tenant {tenant}, which its toml does not grant"),
                            });
                        }
                        return Ok(Identity {
                            tenant: tenant.into(),
                            user_id: id.user_id.map(Arc::from).or(username),
                            superuser: id.superuser,
                        });
                    }
                    Err(e) => {
                        broker.metrics.auth_failed.fetch_add(1, Ordering::Relaxed);
                        return Err(Denied {
                            code: 0x87,
                            message: format!("auth plugin {name} failed ({e}); denied"),
                        });
                    }
                }
            }
        }
    }
    if broker.config.allow_anonymous {
        Ok(Identity {
            tenant: "default".into(),
            user_id: username,
            superuser: false,
        })
    } else {
        Err(Denied {
            code: 0x87,
            message: "no auth plugin accepted the client and anonymous access is disabled".into(),
        })
    }
}
