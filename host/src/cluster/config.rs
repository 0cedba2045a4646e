//! `[cluster]`: where the NATS servers are and who this node is. Absent: one node, no
//! NATS anywhere.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[cluster]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://...`); the client fails over
    /// between them.
    pub nats: Vec<String>,
    /// This node's name, unique in the cluster (default: the host name).
    pub node: Option<String>,
    /// A NATS credentials file (`.creds`, JWT + NKey).
    pub credentials_file: Option<PathBuf>,
    /// NATS user (with `password`).
    pub user: Option<String>,
    /// NATS password.
    pub password: Option<String>,
    /// NATS token.
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for `tls://` servers.
    pub tls_ca_file: Option<PathBuf>,
    /// Refuse servers that do not offer TLS.
    pub tls_required: bool,
    /// How often this node says it is alive, milliseconds.
    pub heartbeat_ms: u64,
    /// A node not heard from for this long is down, milliseconds.
    pub node_timeout_ms: u64,
    /// Messages waiting to be sent to NATS at most; past it they are not sent to other
    /// nodes (counted in `apiary_cluster_forward_dropped_total`).
    pub max_pending: usize,
    /// Payload bytes waiting to be sent to NATS at most (the same).
    pub max_pending_bytes: usize,
    /// Copies JetStream keeps of the cluster's buckets (retained messages): 1 on one
    /// NATS server, 3 on a three-server NATS cluster.
    pub replicas: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats: vec!["nats://127.0.0.1:4222".into()],
            node: None,
            credentials_file: None,
            user: None,
            password: None,
            token: None,
            tls_ca_file: None,
            tls_required: false,
            heartbeat_ms: 1000,
            node_timeout_ms: 5000,
            max_pending: 8192,
            max_pending_bytes: 64 << 20,
            replicas: 1,
        }
    }
}

impl ClusterConfig {
    /// What is wrong with it, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.nats.is_empty() {
            return Err("cluster.nats: at least one NATS server URL".into());
        }
        for url in &self.nats {
            if let Err(e) = url.parse::<async_nats::ServerAddr>() {
                return Err(format!("cluster.nats {url:?}: {e}"));
            }
        }
        if let Some(n) = &self.node {
            if n.is_empty()
                || n.len() > 64
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "cluster.node {n:?}: 1 to 64 letters, digits, '-' or '_'"
                ));
            }
        }
        if self.user.is_some() != self.password.is_some() {
            return Err("cluster.user and cluster.password must be set together".into());
        }
        if self.heartbeat_ms == 0 || self.node_timeout_ms < 2 * self.heartbeat_ms {
            return Err(
                "cluster.heartbeat_ms must be > 0 and cluster.node_timeout_ms at least twice it"
                    .into(),
            );
        }
        if self.max_pending == 0 || self.max_pending_bytes == 0 {
            return Err("cluster.max_pending and cluster.max_pending_bytes must be > 0".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return Err("cluster.replicas: 1 to 5 (JetStream's limit)".into());
        }
        Ok(())
    }

    /// The node name in force: configured, else the host name (made name-safe).
    pub fn node_name(&self) -> String {
        if let Some(n) = &self.node {
            return n.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "apiary".into());
        let name: String = host
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        if name.is_empty() {
            "apiary".into()
        } else {
            name
        }
    }
}
