//! `NAME.toml` beside `NAME.wasm`: host settings at the top level (what the plugin may do,
//! where it is mounted, its limits) and a `[config]` table handed to the plugin as is.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

pub use crate::stream::StreamSettings;

/// A host operation a plugin may be granted (`capabilities = [...]` in its toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Capability {
    /// Query sessions and subscriptions.
    #[serde(rename = "registry.read")]
    RegistryRead,
    /// Disconnect clients (and end their sessions).
    #[serde(rename = "registry.kick")]
    RegistryKick,
    /// Subscribe and unsubscribe on a session's behalf.
    #[serde(rename = "registry.subscribe")]
    RegistrySubscribe,
    /// Expire a tenant's inactive sessions.
    #[serde(rename = "registry.expire")]
    RegistryExpire,
    /// Publish as the broker.
    #[serde(rename = "broker.publish")]
    BrokerPublish,
    /// A private durable key-value store.
    #[serde(rename = "kv")]
    Kv,
    /// Check API keys and request signatures.
    #[serde(rename = "apikeys")]
    ApiKeys,
    /// Verify password hashes natively (argon2, bcrypt) on the host's bounded pool.
    #[serde(rename = "passwords")]
    Passwords,
    /// Receive `message-published` events, payloads included (events role).
    #[serde(rename = "events.messages")]
    EventsMessages,
}

impl Capability {
    /// The name used in tomls and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::RegistryRead => "registry.read",
            Capability::RegistryKick => "registry.kick",
            Capability::RegistrySubscribe => "registry.subscribe",
            Capability::RegistryExpire => "registry.expire",
            Capability::BrokerPublish => "broker.publish",
            Capability::Kv => "kv",
            Capability::ApiKeys => "apikeys",
            Capability::Passwords => "passwords",
            Capability::EventsMessages => "events.messages",
        }
    }

    /// The API key right a call acting as a key must also hold for this capability.
    pub fn right(self) -> Option<crate::apikeys::Right> {
        use crate::apikeys::Right;
        match self {
            Capability::RegistryRead => Some(Right::ConnectionsRead),
            Capability::RegistryKick
            | Capability::RegistrySubscribe
            | Capability::RegistryExpire => Some(Right::ConnectionsWrite),
            Capability::BrokerPublish => Some(Right::Publish),
            _ => None,
        }
    }
}

/// A role a plugin may serve (`roles = [...]` in its toml). Exporting a role is not
/// enough: an `auth` plugin decides who connects, an `events` plugin sees every session
/// of its tenants, so serving one is a grant like a capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Answers HTTP requests.
    Http,
    /// Decides CONNECT, publish and subscribe.
    Auth,
    /// Consumes registry events.
    Events,
    /// Speaks a protocol over WebSocket (and socket.io) connections the host owns.
    Stream,
    /// Intercepts publishes (rewrite, enrich, drop) before routing.
    Message,
}

impl Role {
    /// The name used in tomls and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Http => "http",
            Role::Auth => "auth",
            Role::Events => "events",
            Role::Stream => "stream",
            Role::Message => "message",
        }
    }
}

/// WASI access granted to a plugin (none by default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WasiGrants {
    /// Let the plugin write to the broker's stdout and stderr.
    pub stdio: bool,
    /// Environment variables the plugin sees.
    pub env: std::collections::BTreeMap<String, String>,
    /// Read-only directories the plugin sees: guest path -> host path (relative paths are
    /// relative to the plugins directory). For plugins that read their own data files.
    pub read_dirs: std::collections::BTreeMap<String, std::path::PathBuf>,
}

/// Which publishes a `message` plugin intercepts (`[message]` in its toml).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessageSettings {
    /// Topic filters it intercepts (of its tenants); publishes on other topics never
    /// reach it and cost nothing extra.
    pub filters: Vec<String>,
    /// What a publish becomes when the plugin fails on it: `pass` (routed as is) or
    /// `drop` (0x80 to a v5 publisher).
    pub on_failure: crate::intercept::OnFailure,
}

/// The events role's settings (`[events]` in its toml).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSettings {
    /// Calls `on-events` with an empty batch this often (ms; 0: never), on a task of its
    /// own, for plugins that retry work later (the webhook's deliveries). At least 100.
    pub tick_ms: u64,
}

/// Host settings of one plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Manifest {
    /// Order among plugins of the same role (lower first).
    pub priority: i32,
    /// Path prefix on the main HTTP listener (http role), e.g. `/api/v5`.
    pub mount: Option<String>,
    /// A dedicated HTTP listener for this plugin, serving its routes with no prefix.
    pub listen: Option<SocketAddr>,
    /// Roles it may serve (of those its component exports).
    pub roles: Vec<Role>,
    /// Host operations it may call.
    pub capabilities: Vec<Capability>,
    /// Tenants it may act on; `*` means all.
    pub tenants: Vec<String>,
    /// Linear memory limit in MiB.
    pub memory_limit_mb: u64,
    /// CPU time one call may take, in ms (epoch-based, 10 ms granularity).
    pub call_timeout_ms: u64,
    /// Initialised instances kept for reuse; 0 = a fresh instance (and `init`) per call,
    /// for plugins that must not keep state between calls.
    pub max_instances: usize,
    /// Keys its kv store may hold.
    pub kv_max_keys: u64,
    /// Bytes (keys + values) its kv store may hold.
    pub kv_max_bytes: u64,
    /// WASI grants.
    pub wasi: WasiGrants,
    /// Stream connections (stream role).
    pub stream: StreamSettings,
    /// Intercepted topics (message role).
    pub message: MessageSettings,
    /// Ticks for the events role.
    pub events: EventsSettings,
    /// Origins it may send HTTP requests to, and their limits.
    pub outbound_http: super::outbound::OutboundSettings,
    /// The plugin's own configuration, passed to its `init` as JSON.
    pub config: toml::Table,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            priority: 0,
            mount: None,
            listen: None,
            roles: Vec::new(),
            capabilities: Vec::new(),
            tenants: vec!["default".into()],
            memory_limit_mb: 64,
            call_timeout_ms: 1000,
            max_instances: 4,
            kv_max_keys: 10_000,
            kv_max_bytes: 16 << 20,
            wasi: WasiGrants::default(),
            stream: StreamSettings::default(),
            message: MessageSettings::default(),
            outbound_http: Default::default(),
            events: EventsSettings::default(),
            config: toml::Table::new(),
        }
    }
}

impl Manifest {
    /// Reads `path`, or the defaults when it does not exist.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(t) => Self::parse(Some(&t), path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::parse(None, path),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Parses the text of `path` (None: the file does not exist, so the defaults).
    pub fn parse(text: Option<&str>, path: &Path) -> Result<Self, String> {
        let Some(text) = text else {
            return Ok(Self::default());
        };
        let mut m: Manifest =
            toml::from_str(text).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(base) = path.parent() {
            for host in m.wasi.read_dirs.values_mut() {
                if host.is_relative() {
                    *host = base.join(&*host);
                }
            }
        }
        if let Some(mount) = &m.mount {
            if !mount.starts_with('/') || mount.ends_with('/') && mount.len() > 1 {
                return Err(format!(
                    "{}: mount must start with / and not end with /",
                    path.display()
                ));
            }
        }
        if let Some(bad) = m
            .stream
            .websocket
            .iter()
            .chain(m.stream.socketio.as_slice())
            .find(|p| !p.starts_with('/') || p.len() < 2)
        {
            return Err(format!(
                "{}: stream path {bad:?} must start with / and name something",
                path.display()
            ));
        }
        if m.stream.max_frame_bytes == 0 || m.stream.ping_interval_secs == 0 {
            return Err(format!(
                "{}: stream.max_frame_bytes and stream.ping_interval_secs must be positive",
                path.display()
            ));
        }
        if let Some(bad) = m
            .message
            .filters
            .iter()
            .find(|f| crate::topic::validate_filter(f, usize::MAX).is_err())
        {
            return Err(format!(
                "{}: [message] filter {bad:?} is not a valid topic filter",
                path.display()
            ));
        }
        if m.roles.contains(&Role::Message) && m.message.filters.is_empty() {
            return Err(format!(
                "{}: the message role needs [message] filters = [...], the topics it intercepts",
                path.display()
            ));
        }
        super::outbound::check(&m.outbound_http).map_err(|e| format!("{}: {e}", path.display()))?;
        if m.events.tick_ms != 0 && m.events.tick_ms < 100 {
            return Err(format!(
                "{}: events.tick_ms must be 0 or at least 100",
                path.display()
            ));
        }
        if m.memory_limit_mb == 0 || m.call_timeout_ms == 0 {
            return Err(format!(
                "{}: memory_limit_mb and call_timeout_ms must be positive",
                path.display()
            ));
        }
        Ok(m)
    }

    /// Whether the plugin holds a capability.
    pub fn can(&self, cap: Capability) -> bool {
        self.capabilities.contains(&cap)
    }

    /// Whether the plugin may act on a tenant.
    pub fn may_touch(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|t| t == "*" || t == tenant)
    }

    /// The `[config]` table as JSON for `init`.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.toml");
        assert_eq!(
            Manifest::load(&p).unwrap().memory_limit_mb,
            64,
            "absent file: defaults"
        );
        std::fs::write(
            &p,
            "mount = \"/api/v5\"\nroles = [\"http\"]\ncapabilities = [\"registry.read\"]\n[config]\na = 1\n",
        )
        .unwrap();
        let m = Manifest::load(&p).unwrap();
        assert!(m.can(Capability::RegistryRead) && !m.can(Capability::Kv));
        assert_eq!(m.roles, vec![Role::Http]);
        assert_eq!(m.config_json(), "{\"a\":1}");
        std::fs::write(&p, "capabilities = [\"registry.wreck\"]\n").unwrap();
        assert!(Manifest::load(&p).unwrap_err().contains("registry.wreck"));
        std::fs::write(&p, "roles = [\"admin\"]\n").unwrap();
        assert!(Manifest::load(&p).unwrap_err().contains("admin"));
        std::fs::write(&p, "[stream]\nwebsocket = [\"/session/*/ws\"]\n").unwrap();
        let m = Manifest::load(&p).unwrap();
        assert!(m.stream.websocket_path("/session/abc/ws"));
        assert!(!m.stream.websocket_path("/session//ws"));
        assert!(!m.stream.websocket_path("/session/a/b/ws"));
        assert!(!m.stream.websocket_path("/session/a/ws/x"));
        std::fs::write(&p, "[stream]\nwebsocket = [\"ws\"]\n").unwrap();
        assert!(Manifest::load(&p)
            .unwrap_err()
            .contains("must start with /"));
        std::fs::write(&p, "mout = \"/x\"\n").unwrap();
        assert!(Manifest::load(&p).unwrap_err().contains("mout"));
    }
}
