//! `NAME.toml` beside `NAME.wasm`: host settings at the top level (what the plugin may do,
//! where it is mounted, its limits) and a `[config]` table handed to the plugin as is.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// A host operation a plugin may be granted.
pub const CAPABILITIES: &[&str] = &[
    "registry.read",
    "registry.kick",
    "registry.subscribe",
    "registry.expire",
    "broker.publish",
    "kv",
    "apikeys",
];

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
    /// Host operations it may call (see [`CAPABILITIES`]).
    pub capabilities: Vec<String>,
    /// Tenants it may act on; `*` means all.
    pub tenants: Vec<String>,
    /// Linear memory limit in MiB.
    pub memory_limit_mb: u64,
    /// CPU time one call may take, in ms (epoch-based, 10 ms granularity).
    pub call_timeout_ms: u64,
    /// Initialised instances kept for reuse; 0 = a fresh instance (and `init`) per call,
    /// for plugins that must not keep state between calls.
    pub max_instances: usize,
    /// WASI grants.
    pub wasi: WasiGrants,
    /// The plugin's own configuration, passed to its `init` as JSON.
    pub config: toml::Table,
}

impl Default for Manifest {
    fn default() -> Self {
        Self {
            priority: 0,
            mount: None,
            listen: None,
            capabilities: Vec::new(),
            tenants: vec!["default".into()],
            memory_limit_mb: 64,
            call_timeout_ms: 1000,
            max_instances: 4,
            wasi: WasiGrants::default(),
            config: toml::Table::new(),
        }
    }
}

impl Manifest {
    /// Reads `path`, or the defaults when it does not exist.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut m: Manifest =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(base) = path.parent() {
            for host in m.wasi.read_dirs.values_mut() {
                if host.is_relative() {
                    *host = base.join(&*host);
                }
            }
        }
        if let Some(bad) = m
            .capabilities
            .iter()
            .find(|c| !CAPABILITIES.contains(&c.as_str()))
        {
            return Err(format!(
                "{}: unknown capability {bad:?} (known: {})",
                path.display(),
                CAPABILITIES.join(", ")
            ));
        }
        if let Some(mount) = &m.mount {
            if !mount.starts_with('/') || mount.ends_with('/') && mount.len() > 1 {
                return Err(format!(
                    "{}: mount must start with / and not end with /",
                    path.display()
                ));
            }
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
    pub fn can(&self, cap: &str) -> bool {
        self.capabilities.iter().any(|c| c == cap)
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
            "mount = \"/api/v5\"\ncapabilities = [\"registry.read\"]\n[config]\na = 1\n",
        )
        .unwrap();
        let m = Manifest::load(&p).unwrap();
        assert!(m.can("registry.read") && !m.can("kv"));
        assert_eq!(m.config_json(), "{\"a\":1}");
        std::fs::write(&p, "capabilities = [\"registry.wreck\"]\n").unwrap();
        assert!(Manifest::load(&p).unwrap_err().contains("registry.wreck"));
        std::fs::write(&p, "mout = \"/x\"\n").unwrap();
        assert!(Manifest::load(&p).unwrap_err().contains("mout"));
    }
}
