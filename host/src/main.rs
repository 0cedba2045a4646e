//! The `apiary` binary: parse flags, load config, start the broker, stop on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Apiary: an MQTT 3.1.1 + 5 broker whose extensions are WebAssembly components.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). Without it the embedded defaults (config/apiary.toml) apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// MQTT over TCP listen address.
    #[arg(long)]
    mqtt: Option<SocketAddr>,
    /// MQTT over WebSocket listen address (path /mqtt).
    #[arg(long)]
    ws: Option<SocketAddr>,
    /// MQTT over TLS listen address.
    #[arg(long)]
    tls: Option<SocketAddr>,
    /// MQTT over secure WebSocket listen address.
    #[arg(long)]
    wss: Option<SocketAddr>,
    /// TLS certificate chain (PEM).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Native HTTP API listen address.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Directory for durable state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Directory plugins are loaded from.
    #[arg(long)]
    plugins_dir: Option<PathBuf>,
    /// Bootstrap API keys file.
    #[arg(long)]
    api_keys: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Prints an argon2id PHC hash of a password for `password_hash` in auth-file.toml
    /// (reads the password from stdin unless --password is given).
    Passwd {
        /// The password (visible in the process list and shell history; prefer stdin).
        #[arg(long)]
        password: Option<String>,
    },
}

/// `apiary passwd`: argon2id with the crate's default (OWASP) parameters and a random salt.
fn passwd(password: Option<String>) -> anyhow::Result<()> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let pw = match password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    anyhow::ensure!(!pw.is_empty(), "empty password");
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = argon2::Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
    println!("{hash}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if let Some(Cmd::Passwd { password }) = args.cmd {
        return passwd(password);
    }
    let mut cfg = match &args.config {
        Some(p) => apiary::Config::load(p)?,
        None => apiary::Config::embedded(),
    };
    let l = &mut cfg.listeners;
    l.tcp = args.mqtt.or(l.tcp);
    l.ws = args.ws.or(l.ws);
    l.tls = args.tls.or(l.tls);
    l.wss = args.wss.or(l.wss);
    l.cert = args.cert.or(l.cert.take());
    l.key = args.key.or(l.key.take());
    cfg.http.listen = args.http.or(cfg.http.listen);
    cfg.data_dir = args.data_dir.unwrap_or(cfg.data_dir);
    cfg.plugins_dir = args.plugins_dir.unwrap_or(cfg.plugins_dir);
    cfg.api_keys_file = args.api_keys.or(cfg.api_keys_file);
    cfg.validate()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(async move {
        let server = apiary::start(cfg).await?;
        wait_for_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
