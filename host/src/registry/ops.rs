//! Admin operations over the registry: kick, subscribe/unsubscribe on behalf of a session,
//! publish as the broker, and expire a tenant's inactive sessions. Every operation is
//! scoped to one tenant and never sees another's sessions.

use crate::refusal::{PublishRefused, SubscribeError};
use crate::session::Transport;
use crate::topic::TopicError;

/// Why an admin operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// No session with that client id in that tenant.
    #[error("no session for client id {0}")]
    NotFound(String),
    /// The subscription was refused.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// The topic name is not valid.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// The broker refused the publish (e.g. retained limits).
    #[error(transparent)]
    Publish(#[from] PublishRefused),
    /// The session's ACL refuses the subscription: an administrator may not make one the
    /// client could not make itself.
    #[error("refused by ACL: {0}")]
    Acl(String),
    /// Another node of the cluster, which holds the session, refused (its words).
    #[error("{message}")]
    Remote {
        /// Refused (ACL, limits) rather than invalid.
        refused: bool,
        /// What it said.
        message: String,
    },
}

/// Which connections a kick targets.
#[derive(Debug, Clone)]
pub enum KickTarget {
    /// One client id.
    ClientId(String),
    /// Every session of a user id, optionally only over one transport or protocol.
    UserId {
        /// The user id.
        user_id: String,
        /// Only sessions of this kind.
        only: Option<Via>,
    },
}

/// What kind of connection a kick-user is limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// One transport (tcp, tls, ws, wss).
    Transport(Transport),
    /// One protocol: `mqtt` (MQTT and MQIsdp), `websocket` or `socketio` streams.
    Protocol(&'static str),
}

impl Via {
    /// Parses a transport (`tcp`, `tls`/`ssl`, `ws`, `wss`) or a protocol (`mqtt`,
    /// `websocket`, `socketio`); None when it is neither.
    pub fn parse(s: &str) -> Option<Via> {
        Some(match s.to_ascii_lowercase().as_str() {
            "tcp" => Via::Transport(Transport::Tcp),
            "tls" | "ssl" => Via::Transport(Transport::Tls),
            "ws" => Via::Transport(Transport::Ws),
            "wss" => Via::Transport(Transport::Wss),
            "mqtt" => Via::Protocol("mqtt"),
            "websocket" => Via::Protocol("websocket"),
            "socketio" => Via::Protocol("socketio"),
            _ => return None,
        })
    }

    /// The name [`Via::parse`] reads back.
    pub fn name(self) -> &'static str {
        match self {
            Via::Transport(crate::session::Transport::Tcp) => "tcp",
            Via::Transport(crate::session::Transport::Tls) => "tls",
            Via::Transport(crate::session::Transport::Ws) => "ws",
            Via::Transport(crate::session::Transport::Wss) => "wss",
            Via::Protocol(p) => p,
        }
    }

    /// Whether a session with this client info is of this kind.
    pub fn matches(self, i: &crate::session::ClientInfo) -> bool {
        match self {
            Via::Transport(t) => i.transport == t,
            Via::Protocol("mqtt") => matches!(i.proto_name, "MQTT" | "MQIsdp"),
            Via::Protocol(p) => i.proto_name == p,
        }
    }
}
