//! The `apiary` binary: parse flags, load config, start the broker, stop on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

mod ctl;

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
    /// Load generator for any MQTT broker: p2p, fan-out, fan-in, fan-in-shared, pub, sub
    /// or conn. Prints sent/received msg/s, latency percentiles, losses and errors.
    Bench {
        /// Scenario: p2p, fan-out, fan-in, fan-in-shared, pub, sub, conn.
        scenario: String,
        /// Broker host.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Broker port.
        #[arg(long, default_value_t = 1883)]
        port: u16,
        /// Port subscribers connect to instead (repeat it: round robin), e.g. other nodes
        /// of a cluster while publishers use --port.
        #[arg(long = "sub-port")]
        sub_ports: Vec<u16>,
        /// MQTT over WebSocket (path /mqtt) instead of TCP.
        #[arg(long)]
        ws: bool,
        /// MQTT 5 instead of 3.1.1.
        #[arg(long)]
        v5: bool,
        /// QoS 0, 1 or 2.
        #[arg(long, default_value_t = 0)]
        qos: u8,
        /// Payload bytes (at least 16).
        #[arg(long, default_value_t = 16)]
        size: usize,
        /// Publishers / subscribers / connections.
        #[arg(long, short = 'n', default_value_t = 10)]
        clients: usize,
        /// Messages per second per publisher (conn: connections per second); default unbounded.
        #[arg(long)]
        rate: Option<u64>,
        /// Seconds to publish (conn: to hold connections).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Messages per publisher instead of a duration.
        #[arg(long)]
        count: Option<u64>,
        /// Unacknowledged QoS 1/2 messages per publisher.
        #[arg(long, default_value_t = 64)]
        inflight: u16,
        /// Username.
        #[arg(long)]
        username: Option<String>,
        /// Password.
        #[arg(long)]
        password: Option<String>,
        /// Write the result as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// No progress line.
        #[arg(long)]
        quiet: bool,
    },
    /// Administers a running broker over its admin API (`apiary ctl --help`).
    Ctl(ctl::CtlArgs),
    /// Prints a shell completion script: `apiary completions bash > /etc/bash_completion.d/apiary`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Prints an argon2id PHC hash of a password for `password_hash` in auth-file.toml
    /// (reads the password from stdin unless --password is given).
    Passwd {
        /// The password (visible in the process list and shell history; prefer stdin).
        #[arg(long)]
        password: Option<String>,
    },
}

/// `apiary bench`: one scenario against a broker; the summary on stdout, JSON if asked.
fn bench(cmd: Cmd) -> anyhow::Result<()> {
    let Cmd::Bench {
        scenario,
        host,
        port,
        sub_ports,
        ws,
        v5,
        qos,
        size,
        clients,
        rate,
        duration,
        count,
        inflight,
        username,
        password,
        json,
        quiet,
    } = cmd
    else {
        unreachable!("called with Bench");
    };
    let names: Vec<&str> = apiary_bench::Scenario::ALL
        .iter()
        .map(|s| s.name())
        .collect();
    let sc = apiary_bench::Scenario::parse(&scenario).with_context(|| {
        format!(
            "unknown scenario {scenario:?} (one of: {})",
            names.join(", ")
        )
    })?;
    anyhow::ensure!(duration > 0.0, "duration must be positive");
    let opts = apiary_bench::Opts {
        host,
        port,
        sub_ports,
        ws,
        version: if v5 { 5 } else { 4 },
        qos,
        size,
        clients,
        rate,
        duration: std::time::Duration::from_secs_f64(duration),
        count,
        inflight,
        username,
        password,
        progress: !quiet,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let report = rt.block_on(apiary_bench::run(sc, opts))?;
    println!("{}", report.line());
    if let Some(p) = json {
        std::fs::write(&p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
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

/// The default log filter: the store engine's own info lines (one per keyspace at every
/// start) are noise to an operator; RUST_LOG or `log_level` shows them when asked.
const DEFAULT_LOG: &str = "info,fjall=warn,lsm_tree=warn";

/// The configuration: the file (or the embedded defaults) with the command line's
/// overrides. Read at start and again at every reload.
#[derive(Debug, Clone)]
struct Source {
    file: Option<PathBuf>,
    mqtt: Option<SocketAddr>,
    ws: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    wss: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    http: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    plugins_dir: Option<PathBuf>,
    api_keys: Option<PathBuf>,
}

impl Source {
    fn load(&self) -> anyhow::Result<apiary::Config> {
        let mut cfg = match &self.file {
            Some(p) => apiary::Config::load(p)?,
            None => apiary::Config::embedded(),
        };
        let s = self.clone();
        let l = &mut cfg.listeners;
        l.tcp = s.mqtt.or(l.tcp);
        l.ws = s.ws.or(l.ws);
        l.tls = s.tls.or(l.tls);
        l.wss = s.wss.or(l.wss);
        l.cert = s.cert.or(l.cert.take());
        l.key = s.key.or(l.key.take());
        cfg.http.listen = s.http.or(cfg.http.listen);
        cfg.data_dir = s.data_dir.unwrap_or(cfg.data_dir);
        cfg.plugins_dir = s.plugins_dir.unwrap_or(cfg.plugins_dir);
        cfg.api_keys_file = s.api_keys.or(cfg.api_keys_file);
        cfg.validate()?;
        Ok(cfg)
    }
}

fn main() -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_set = from_env.is_some();
    let (filter, log_handle) = tracing_subscriber::reload::Layer::new(
        from_env.unwrap_or_else(|| EnvFilter::new(DEFAULT_LOG)),
    );
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
        )
        .init();
    let args = Args::parse();
    match args.cmd {
        Some(Cmd::Ctl(c)) => std::process::exit(ctl::run(c)),
        Some(Cmd::Completions { shell }) => {
            use clap::CommandFactory;
            let mut cmd = Args::command();
            clap_complete::generate(shell, &mut cmd, "apiary", &mut std::io::stdout());
            return Ok(());
        }
        Some(Cmd::Passwd { password }) => return passwd(password),
        Some(cmd @ Cmd::Bench { .. }) => return bench(cmd),
        None => {}
    }
    let source = Source {
        file: args.config,
        mqtt: args.mqtt,
        ws: args.ws,
        tls: args.tls,
        wss: args.wss,
        cert: args.cert,
        key: args.key,
        http: args.http,
        data_dir: args.data_dir,
        plugins_dir: args.plugins_dir,
        api_keys: args.api_keys,
    };
    let cfg = source.load()?;
    let set_filter = move |f: Option<&str>| -> Result<(), String> {
        let filter = match f {
            Some(f) => EnvFilter::try_new(f).map_err(|e| format!("log_level {f:?}: {e}"))?,
            None => {
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG))
            }
        };
        log_handle.reload(filter).map_err(|e| e.to_string())
    };
    // RUST_LOG wins at start; a reload's log_level applies over it.
    if let (Some(level), false) = (&cfg.log_level, env_set) {
        set_filter(Some(level)).map_err(|e| anyhow::anyhow!(e))?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(async move {
        // Installed before the start: a SIGHUP during it is a reload once started, never
        // the default action (which ends the process).
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        let server = apiary::start(cfg).await?;
        let b = server.broker.clone();
        b.set_config_source(Box::new(move || {
            source.load().map_err(|e| format!("{e:#}"))
        }));
        b.set_log_filter(Box::new(set_filter));
        tokio::spawn(reload_on_hangup(b, hup));
        wait_for_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        Ok(())
    })
}

/// SIGHUP: reload the configuration (what it applied, or why not, is logged).
async fn reload_on_hangup(broker: apiary::Broker, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        let b = broker.clone();
        match tokio::task::spawn_blocking(move || b.reload()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "reload failed; nothing changed"),
            Err(e) => tracing::error!(error = %e, "reload failed"),
        }
    }
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
