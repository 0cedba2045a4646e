//! Runtime reload (SIGHUP, `POST /reload`, `apiary ctl reload`): the configuration is read
//! again and what can change in a running broker is put in force at once (MQTT and
//! session limits, auth settings, retained limits, the TLS certificate, timeouts, the log
//! filter); every other changed key is reported as needing a restart and left as it was.
//! Nothing is applied when the new file does not load or validate, or its certificate
//! does not.

use serde::Serialize;
use serde_json::Value;

use crate::broker::Broker;
use crate::config::Config;

/// Reads the configuration again (the file, with the command line's overrides).
pub type ConfigSource = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Puts a log filter in force.
/// None: the binary's default (RUST_LOG, else `info`).
pub type LogFilter = Box<dyn Fn(Option<&str>) -> Result<(), String> + Send + Sync>;

/// The TLS acceptor in force and the binary's reload hooks, held by the broker.
#[derive(Default)]
pub struct Hooks {
    pub(crate) tls: arc_swap::ArcSwapOption<tokio_rustls::TlsAcceptor>,
    pub(crate) source: std::sync::OnceLock<ConfigSource>,
    pub(crate) log: std::sync::OnceLock<LogFilter>,
    /// One reload at a time (SIGHUP and `POST /reload` may race).
    pub(crate) serial: parking_lot::Mutex<()>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("tls", &self.tls.load().is_some())
            .field("source", &self.source.get().is_some())
            .finish()
    }
}

/// Keys that take effect without a restart: a dotted key, or a section ending in `.`.
const LIVE: &[&str] = &[
    "mqtt.",
    "session.",
    "auth.",
    "retained.max_messages",
    "retained.max_bytes",
    "listeners.cert",
    "listeners.key",
    "listeners.connect_timeout_secs",
    "listeners.write_timeout_secs",
    "log_level",
];

fn is_live(key: &str) -> bool {
    LIVE.iter()
        .any(|l| key == *l || (l.ends_with('.') && key.starts_with(l)))
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changed keys now in force.
    pub applied: Vec<String>,
    /// Changed keys left as they were until a restart.
    pub needs_restart: Vec<String>,
}

/// Why a reload applied nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The broker was started without a way to read its configuration again.
    #[error("this broker has no configuration source to reload from")]
    NoSource,
    /// The file did not load or validate.
    #[error("the configuration was not reloaded: {0}")]
    Config(String),
    /// The new certificate or key did not load.
    #[error("the configuration was not reloaded: the TLS certificate did not load: {0}")]
    Tls(String),
}

/// Every leaf of a config as `section.key` → value.
fn leaves(c: &Config) -> Vec<(String, Value)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.clone())),
        }
    }
    let mut out = Vec::new();
    walk("", &serde_json::to_value(c).unwrap_or_default(), &mut out);
    out
}

/// The keys whose values differ.
pub fn changed(old: &Config, new: &Config) -> Vec<String> {
    let old = leaves(old);
    let new = leaves(new);
    new.iter()
        .filter(|(k, v)| old.iter().find(|(ok, _)| ok == k).map(|(_, ov)| ov) != Some(v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// `old` with the live keys among `keys` taken from `new`.
fn merge(old: &Config, new: &Config, keys: &[String]) -> Result<Config, String> {
    let mut v = serde_json::to_value(old).map_err(|e| e.to_string())?;
    let n = serde_json::to_value(new).map_err(|e| e.to_string())?;
    for k in keys {
        let path: Vec<&str> = k.split('.').collect();
        let mut from = &n;
        for p in &path {
            from = &from[*p];
        }
        let mut to = &mut v;
        for p in &path {
            to = &mut to[*p];
        }
        *to = from.clone();
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

impl Broker {
    /// Reads the configuration again and applies it (see the module docs).
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let source = self.config_source().ok_or(ReloadError::NoSource)?;
        let new = source().map_err(ReloadError::Config)?;
        self.apply_config(new)
    }

    /// Applies `new` as far as a running broker can. Everything that can fail (the
    /// certificate, the log filter) is done before anything is put in force.
    pub fn apply_config(&self, new: Config) -> Result<ReloadReport, ReloadError> {
        let _serial = self.reload_serial();
        new.validate()
            .map_err(|e| ReloadError::Config(e.to_string()))?;
        let old = self.config();
        let keys = changed(&old, &new);
        let (applied, needs_restart): (Vec<String>, Vec<String>) =
            keys.into_iter().partition(|k| is_live(k));
        let next = merge(&old, &new, &applied).map_err(ReloadError::Config)?;
        // The certificate is read again at every reload (renewed in place, or moved).
        let tls = match self.tls() {
            None => None,
            Some(_) => {
                let (cert, key) = match (&next.listeners.cert, &next.listeners.key) {
                    (Some(c), Some(k)) => (c.clone(), k.clone()),
                    (None, None) => {
                        crate::mqtt::listener::ensure_self_signed(&next.data_dir.join("tls"))
                            .map_err(|e| ReloadError::Tls(e.to_string()))?
                    }
                    _ => {
                        return Err(ReloadError::Tls(
                            "set both listeners.cert and listeners.key, or neither".into(),
                        ))
                    }
                };
                Some(
                    crate::mqtt::listener::tls_acceptor(&cert, &key)
                        .map_err(|e| ReloadError::Tls(e.to_string()))?,
                )
            }
        };
        if applied.iter().any(|k| k == "log_level") {
            if let Some(f) = self.log_filter() {
                f(next.log_level.as_deref()).map_err(ReloadError::Config)?;
            }
        }
        drop(old);
        if let Some(t) = tls {
            self.set_tls(t);
        }
        self.set_config(next);
        let report = ReloadReport {
            applied,
            needs_restart,
        };
        tracing::info!(applied = ?report.applied, needs_restart = ?report.needs_restart, "configuration reloaded");
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_split_into_live_and_restart() {
        let old = Config::embedded();
        let mut new = old.clone();
        new.session.max_queued_messages += 1;
        new.auth.allow_anonymous = crate::config::Anonymous::Never;
        new.data_dir = "elsewhere".into();
        new.listeners.tcp = None;
        let keys = changed(&old, &new);
        let (mut live, mut restart): (Vec<_>, Vec<_>) =
            keys.iter().cloned().partition(|k| is_live(k));
        live.sort();
        restart.sort();
        assert_eq!(
            live,
            ["auth.allow_anonymous", "session.max_queued_messages"]
        );
        assert_eq!(restart, ["data_dir", "listeners.tcp"]);
        let merged = merge(&old, &new, &live).unwrap();
        assert_eq!(
            merged.session.max_queued_messages,
            new.session.max_queued_messages
        );
        assert_eq!(
            merged.data_dir, old.data_dir,
            "restart-only keys keep their value"
        );
        assert_eq!(merged.listeners.tcp, old.listeners.tcp);
    }
}
