//! Typed configuration. One struct per component; every field documented and defaulted,
//! unknown keys rejected so a typo is an error at startup rather than a silently ignored knob.
//! `config/apiary.toml` documents every key and is embedded as the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The embedded default configuration (the same file shipped as `config/apiary.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../config/apiary.toml");

/// Errors while reading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that failed.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse or had an unknown key or a wrong type.
    #[error("invalid config {origin}: {source}")]
    Parse {
        /// Where the TOML came from.
        origin: String,
        /// The parse error, with the key and line.
        source: Box<toml::de::Error>,
    },
    /// A value parsed but is not usable.
    #[error("invalid config value: {0}")]
    Invalid(String),
}

/// The whole broker configuration.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Network listeners.
    pub listeners: ListenersConfig,
    /// MQTT protocol limits and behaviour.
    pub mqtt: MqttConfig,
    /// Session and queue limits.
    pub session: SessionConfig,
    /// Native HTTP API.
    pub http: HttpConfig,
    /// Durable state.
    pub store: StoreConfig,
    /// Where durable state lives.
    pub data_dir: PathBuf,
    /// Where plugins are loaded from.
    pub plugins_dir: PathBuf,
    /// Where compiled plugins are cached (default: `data_dir/plugin-cache`).
    pub plugin_cache_dir: Option<PathBuf>,
    /// The key that authenticates cached compiled plugins (default:
    /// `data_dir/plugin-cache.key`, created with mode 0600).
    pub plugin_cache_key_file: Option<PathBuf>,
    /// Bootstrap API keys file: one `key:secret:right[,right...][:tenant=NAME]` per line.
    pub api_keys_file: Option<PathBuf>,
    /// Interval of `$SYS/broker/...` publications in seconds (0 disables them).
    pub sys_interval_secs: u64,
    /// Authentication and authorisation.
    pub auth: AuthConfig,
    /// Retained message limits.
    pub retained: RetainedConfig,
    /// Log filter (`info`, `debug`, or per target as RUST_LOG takes it); None: RUST_LOG,
    /// else `info`. Changes on reload.
    pub log_level: Option<String>,
    /// Several nodes as one broker over NATS; None: this node alone.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listeners: ListenersConfig::default(),
            mqtt: MqttConfig::default(),
            session: SessionConfig::default(),
            http: HttpConfig::default(),
            store: StoreConfig::default(),
            data_dir: PathBuf::from("data"),
            plugins_dir: PathBuf::from("plugins.d"),
            plugin_cache_dir: None,
            plugin_cache_key_file: None,
            api_keys_file: None,
            sys_interval_secs: 10,
            auth: AuthConfig::default(),
            retained: RetainedConfig::default(),
            log_level: None,
            cluster: None,
        }
    }
}

/// Listener addresses; an absent address disables that listener.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenersConfig {
    /// MQTT over TCP.
    pub tcp: Option<SocketAddr>,
    /// MQTT over WebSocket (path `/mqtt`, subprotocol `mqtt`).
    pub ws: Option<SocketAddr>,
    /// MQTT over TLS.
    pub tls: Option<SocketAddr>,
    /// MQTT over WebSocket over TLS.
    pub wss: Option<SocketAddr>,
    /// TLS certificate chain (PEM). When both `cert` and `key` are absent, a self-signed
    /// certificate is generated into the data dir on first start.
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub key: Option<PathBuf>,
    /// Maximum concurrent MQTT connections over all listeners.
    pub max_connections: usize,
    /// Seconds a new connection may take to send CONNECT.
    pub connect_timeout_secs: u64,
    /// Seconds one write to a client may block (it stopped reading) before the
    /// connection is closed.
    pub write_timeout_secs: u64,
    /// CONNECTs per second one IP address may make (0 = unlimited); over it, CONNACK
    /// 0x9F (3.1.1: 3, server unavailable).
    pub connect_rate_per_ip: u32,
    /// CONNECTs one IP address may make in a burst above its rate.
    pub connect_burst_per_ip: u32,
    /// Apply the per-IP CONNECT rate to loopback addresses too.
    pub connect_rate_loopback: bool,
}

impl Default for ListenersConfig {
    fn default() -> Self {
        Self {
            tcp: None,
            ws: None,
            tls: None,
            wss: None,
            cert: None,
            key: None,
            max_connections: 100_000,
            connect_timeout_secs: 10,
            write_timeout_secs: 30,
            connect_rate_per_ip: 100,
            connect_burst_per_ip: 200,
            connect_rate_loopback: false,
        }
    }
}

/// MQTT protocol limits.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Maximum packet size in bytes accepted from clients (advertised in v5 CONNACK).
    pub max_packet_size: u32,
    /// Receive maximum advertised to v5 clients: QoS 1/2 publishes a client may have unacked.
    pub receive_maximum: u16,
    /// Topic aliases a v5 client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Upper bound on keepalive; a v5 client asking for more (or 0) gets this as server keep alive.
    /// 0 means the client's value is accepted as is.
    pub max_keepalive_secs: u16,
    /// Maximum subscriptions per session (0 = unlimited).
    pub max_subscriptions: usize,
    /// Longest topic name or filter, in levels.
    pub max_topic_levels: usize,
    /// Retained messages are supported.
    pub retain_available: bool,
    /// Shared subscriptions (`$share/group/filter`) are supported.
    pub shared_subscription_available: bool,
    /// Wildcard subscriptions are supported.
    pub wildcard_subscription_available: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            receive_maximum: 32,
            topic_alias_maximum: 1024,
            max_keepalive_secs: 0,
            max_subscriptions: 1000,
            max_topic_levels: 128,
            retain_available: true,
            shared_subscription_available: true,
            wildcard_subscription_available: true,
        }
    }
}

/// What a full session queue does with the next message.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Drop the oldest queued message to make room (EMQX's default).
    DropOldest,
    /// Refuse the new message.
    DropNewest,
}

/// Session and queue limits.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// QoS 1/2 messages in flight to one client (capped by the client's receive maximum).
    pub max_inflight: u16,
    /// Messages queued per session (online behind the inflight window, or offline).
    pub max_queued_messages: usize,
    /// Payload bytes queued per session (0 = unlimited).
    pub max_queued_bytes: usize,
    /// What happens when a queue is full.
    pub queue_full: QueueFullPolicy,
    /// A full queue of an online session makes the MQTT publishers of its QoS 1/2
    /// messages wait (they stop being read) instead of dropping (decision 0018).
    pub backpressure: bool,
    /// How long one publisher waits for one session's queue before that session falls
    /// back to `queue_full` (until its queue is down to half), in milliseconds.
    pub backpressure_timeout_ms: u64,
    /// Queue QoS 0 messages for offline persistent sessions too (EMQX does, Mosquitto does not).
    pub queue_qos0_offline: bool,
    /// Session expiry for MQTT 3.1.1 sessions with clean session = 0, in seconds.
    /// 4294967295 means never (as MQTT 5 defines the value).
    pub v3_session_expiry_secs: u32,
    /// Upper bound on the session expiry a v5 client may ask for.
    pub max_session_expiry_secs: u32,
    /// QoS 2 messages from one client awaiting PUBREL.
    pub max_awaiting_rel: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_inflight: 512,
            max_queued_messages: 1000,
            max_queued_bytes: 16 << 20,
            queue_full: QueueFullPolicy::DropOldest,
            backpressure: true,
            backpressure_timeout_ms: 2000,
            queue_qos0_offline: true,
            v3_session_expiry_secs: u32::MAX,
            max_session_expiry_secs: u32::MAX,
            max_awaiting_rel: 100,
        }
    }
}

/// What an action no auth plugin decided gets.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NoMatch {
    /// Allowed (Mosquitto without an ACL file, EMQX's `no_match = allow`).
    Allow,
    /// Refused.
    Deny,
}

/// When a CONNECT that no auth plugin decided is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anonymous {
    /// Always (`true`).
    Always,
    /// Never (`false`).
    Never,
    /// Only from loopback addresses (`"loopback"`, the default): a fresh install works
    /// from the machine it runs on and nowhere else.
    Loopback,
}

impl Anonymous {
    /// Whether an undecided CONNECT from `ip` is accepted.
    pub fn allows(self, ip: std::net::IpAddr) -> bool {
        match self {
            Anonymous::Always => true,
            Anonymous::Never => false,
            Anonymous::Loopback => ip.to_canonical().is_loopback(),
        }
    }
}

impl serde::Serialize for Anonymous {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Anonymous::Always => s.serialize_bool(true),
            Anonymous::Never => s.serialize_bool(false),
            Anonymous::Loopback => s.serialize_str("loopback"),
        }
    }
}

impl<'de> Deserialize<'de> for Anonymous {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, serde::Serialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Anonymous::Always),
            Raw::Bool(false) => Ok(Anonymous::Never),
            Raw::Text(t) if t == "loopback" => Ok(Anonymous::Loopback),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "allow_anonymous must be true, false or \"loopback\", not {t:?}"
            ))),
        }
    }
}

/// The auth chain: CONNECT authentication and publish/subscribe authorisation by the
/// `auth` plugins (see `docs/plugins.md`).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept a CONNECT that no auth plugin decided: true, false or "loopback".
    pub allow_anonymous: Anonymous,
    /// A publish or subscribe that no auth plugin decided.
    pub acl_no_match: NoMatch,
    /// ACL decisions cached per connection (action + topic); 0 turns the cache off.
    pub acl_cache_max: usize,
    /// Seconds a cached ACL decision stays valid (a plugin reload clears it at once).
    pub acl_cache_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: Anonymous::Loopback,
            acl_no_match: NoMatch::Allow,
            acl_cache_max: 256,
            acl_cache_ttl_secs: 60,
        }
    }
}

/// Native HTTP API.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address of the native API and the plugin HTTP gateway.
    pub listen: Option<SocketAddr>,
    /// The same over HTTPS, with the MQTT listeners' certificate and key.
    pub https: Option<SocketAddr>,
    /// Failed API-key logins one IP address may make per minute before it gets 429.
    pub max_auth_failures: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: None,
            https: None,
            max_auth_failures: 10,
        }
    }
}

/// Retained messages: limits per tenant, and pruning of expired ones.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetainedConfig {
    /// Retained messages one tenant may keep (0 = unlimited).
    pub max_messages: usize,
    /// Payload bytes of retained messages one tenant may keep (0 = unlimited).
    pub max_bytes: usize,
    /// Seconds between sweeps that remove expired retained messages.
    pub prune_interval_secs: u64,
}

impl Default for RetainedConfig {
    fn default() -> Self {
        Self {
            max_messages: 100_000,
            max_bytes: 256 << 20,
            prune_interval_secs: 60,
        }
    }
}

impl Config {
    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            source: Box::new(e),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a config file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The embedded defaults.
    pub fn embedded() -> Self {
        Self::from_toml(DEFAULT_CONFIG, "(embedded defaults)")
            .expect("embedded config/apiary.toml is valid")
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mqtt.receive_maximum == 0 {
            return Err(ConfigError::Invalid(
                "mqtt.receive_maximum must be at least 1".into(),
            ));
        }
        if self.session.max_inflight == 0 {
            return Err(ConfigError::Invalid(
                "session.max_inflight must be at least 1".into(),
            ));
        }
        if self.mqtt.max_packet_size < 16 {
            return Err(ConfigError::Invalid(
                "mqtt.max_packet_size must be at least 16".into(),
            ));
        }
        if self.listeners.cert.is_some() != self.listeners.key.is_some() {
            return Err(ConfigError::Invalid(
                "listeners.cert and listeners.key must be set together".into(),
            ));
        }
        if let Some(c) = &self.cluster {
            c.check().map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }

    /// A config for tests and embedding: every listener on an ephemeral loopback port,
    /// no `$SYS` timer, data in `data_dir`.
    pub fn ephemeral(data_dir: PathBuf) -> Self {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        Self {
            listeners: ListenersConfig {
                tcp: Some(any),
                ws: Some(any),
                tls: Some(any),
                wss: Some(any),
                max_connections: 10_000,
                ..Default::default()
            },
            http: HttpConfig {
                listen: Some(any),
                https: Some(any),
                ..HttpConfig::default()
            },
            data_dir,
            sys_interval_secs: 0,
            auth: AuthConfig {
                allow_anonymous: Anonymous::Always,
                ..AuthConfig::default()
            },
            ..Self::embedded()
        }
    }
}

/// When writes become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// fsync every group of writes before acknowledging the publishes they carry.
    Always,
    /// Write at once (to OS buffers), fsync every `batch_interval_ms`.
    Batch,
    /// Write at once (to OS buffers), never fsync.
    Never,
}

/// Store settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Durability policy.
    pub sync: SyncMode,
    /// fsync interval in `batch` mode, in ms.
    pub batch_interval_ms: u64,
    /// Bytes of operations waiting for the writer past which QoS 1/2 acknowledgements
    /// wait for it; at twice this, submitters block.
    pub max_queued_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            sync: SyncMode::Batch,
            batch_interval_ms: 10,
            max_queued_bytes: 64 << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse() {
        let c = Config::embedded();
        assert_eq!(c.listeners.tcp.unwrap().port(), 1883);
        assert_eq!(c.listeners.ws.unwrap().port(), 8083);
        assert_eq!(c.listeners.tls.unwrap().port(), 8883);
        assert_eq!(c.listeners.wss.unwrap().port(), 8084);
        assert_eq!(c.http.listen.unwrap().port(), 18083);
    }

    #[test]
    fn a_partial_table_keeps_the_documented_defaults() {
        let c = Config::from_toml("[listeners]\ntcp = \"127.0.0.1:0\"\n", "t").unwrap();
        assert_eq!(c.listeners.max_connections, 100_000);
        assert_eq!(c.listeners.connect_timeout_secs, 10);
        assert!(
            c.listeners.ws.is_none(),
            "an absent address disables the listener"
        );
        assert_eq!(c.session.max_inflight, 512);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("[mqtt]\nmax_packet_sise = 10\n", "t").unwrap_err();
        assert!(err.to_string().contains("max_packet_sise"), "{err}");
    }

    #[test]
    fn allow_anonymous_takes_a_bool_or_loopback() {
        use std::net::IpAddr;
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let far: IpAddr = "192.0.2.7".parse().unwrap();
        let c = Config::embedded();
        assert_eq!(c.auth.allow_anonymous, Anonymous::Loopback);
        assert!(c.auth.allow_anonymous.allows(lo) && c.auth.allow_anonymous.allows(lo6));
        assert!(!c.auth.allow_anonymous.allows(far));
        let c = Config::from_toml("[auth]\nallow_anonymous = true\n", "t").unwrap();
        assert!(c.auth.allow_anonymous.allows(far));
        let c = Config::from_toml("[auth]\nallow_anonymous = false\n", "t").unwrap();
        assert!(!c.auth.allow_anonymous.allows(lo));
        let e = Config::from_toml("[auth]\nallow_anonymous = \"lan\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
    }

    #[test]
    fn cert_without_key_is_rejected() {
        let err = Config::from_toml("[listeners]\ncert = \"a.pem\"\n", "t").unwrap_err();
        assert!(matches!(err, ConfigError::Invalid(_)));
    }
}
