//! `apiary ctl`: administers a running broker over its admin API (the native routes and
//! the stock EMQX clients API plugin). Tables for people, `--json` for scripts, and exit
//! codes that say what went wrong (see [`client::Exit`]).

use std::path::PathBuf;

use serde_json::{json, Value};

mod client;

use client::{enc, query, record, table, CtlError, Given, Target};

/// Connection settings and the command (`Debug` hides the secret).
#[derive(clap::Args)]
pub struct CtlArgs {
    /// Admin API base URL [default: http://127.0.0.1:18083].
    #[arg(long, env = "APIARY_URL")]
    url: Option<String>,
    /// API key id.
    #[arg(long, env = "APIARY_KEY")]
    key: Option<String>,
    /// API key secret.
    #[arg(long, env = "APIARY_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Settings file with url, key and secret [default: ~/.config/apiary/ctl.toml].
    #[arg(long, env = "APIARY_CTL_CONFIG")]
    ctl_config: Option<PathBuf>,
    /// A local broker's data dir: its api-keys.txt gives a key when none is set.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: CtlCmd,
}

impl std::fmt::Debug for CtlArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtlArgs")
            .field("url", &self.url)
            .field("key", &self.key)
            .field("cmd", &self.cmd)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, clap::Subcommand)]
enum CtlCmd {
    /// Health, sessions, connections, messages and plugins at a glance.
    Status,
    /// Sessions: list (with the registry's filters), show, kick.
    #[command(subcommand)]
    Clients(ClientsCmd),
    /// Subscriptions, filtered by client id or topic.
    Subscriptions {
        /// Only this client's.
        #[arg(long)]
        clientid: Option<String>,
        /// Only this exact filter.
        #[arg(long)]
        topic: Option<String>,
        /// Only filters matching this topic name.
        #[arg(long)]
        match_topic: Option<String>,
        /// Page (from 1).
        #[arg(long)]
        page: Option<u32>,
        /// Rows per page.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Publishes a message as the broker.
    Publish {
        /// Topic name.
        topic: String,
        /// Payload (UTF-8).
        payload: String,
        /// QoS 0, 1 or 2.
        #[arg(long, default_value_t = 0)]
        qos: u8,
        /// Retain it.
        #[arg(long)]
        retain: bool,
    },
    /// Plugins: list, reload, logs.
    #[command(subcommand)]
    Plugins(PluginsCmd),
    /// API keys: list, show, create, update, rotate, delete.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Retained messages: list, delete.
    #[command(subcommand)]
    Retained(RetainedCmd),
    /// Re-reads the broker's configuration file (as SIGHUP does) and says what it applied
    /// and what needs a restart.
    Reload,
}

#[derive(Debug, clap::Subcommand)]
enum ClientsCmd {
    /// Lists sessions.
    List {
        /// Exact client id.
        #[arg(long)]
        clientid: Option<String>,
        /// Exact username.
        #[arg(long)]
        username: Option<String>,
        /// Client id contains.
        #[arg(long)]
        like_clientid: Option<String>,
        /// Username contains.
        #[arg(long)]
        like_username: Option<String>,
        /// connected or disconnected.
        #[arg(long)]
        conn_state: Option<String>,
        /// Peer IP address.
        #[arg(long)]
        ip_address: Option<String>,
        /// Page (from 1).
        #[arg(long)]
        page: Option<u32>,
        /// Rows per page.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Shows one session.
    Show {
        /// Client id.
        clientid: String,
    },
    /// Disconnects a client and ends its session.
    Kick {
        /// Client id.
        clientid: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum PluginsCmd {
    /// Lists plugins with their state and roles.
    List,
    /// Reloads a plugin from the plugins directory.
    Reload {
        /// Plugin name.
        name: String,
    },
    /// A plugin's last log lines.
    Logs {
        /// Plugin name.
        name: String,
        /// Lines.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, clap::Subcommand)]
enum KeysCmd {
    /// Lists keys (never their secrets).
    List,
    /// Shows one key.
    Show {
        /// Key name.
        name: String,
    },
    /// Creates a key and prints its secret (shown only now).
    Create {
        /// Key name.
        name: String,
        /// administrator, viewer or publisher (EMQX's roles).
        #[arg(long, conflicts_with = "rights")]
        role: Option<String>,
        /// Rights, comma-separated: admin, connections:read, connections:write, publish,
        /// metrics:read.
        #[arg(long, value_delimiter = ',')]
        rights: Option<Vec<String>>,
        /// Tenant, or * for every tenant.
        #[arg(long, default_value = "*")]
        tenant: String,
        /// Description.
        #[arg(long)]
        desc: Option<String>,
        /// Expiry: RFC 3339 time, or Unix seconds.
        #[arg(long)]
        expires: Option<String>,
        /// Keep the secret (sealed) for HMAC-signed requests (Beebotte).
        #[arg(long)]
        signing: bool,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Changes a key.
    Update {
        /// Key name.
        name: String,
        /// Enable it.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Disable it (refused everywhere at once).
        #[arg(long)]
        disable: bool,
        /// New description.
        #[arg(long)]
        desc: Option<String>,
        /// New expiry: RFC 3339, Unix seconds, or "infinity".
        #[arg(long)]
        expires: Option<String>,
        /// New role.
        #[arg(long, conflicts_with = "rights")]
        role: Option<String>,
        /// New rights, comma-separated.
        #[arg(long, value_delimiter = ',')]
        rights: Option<Vec<String>>,
        /// New tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Gives a key a new secret; the old one is refused at once.
    Rotate {
        /// Key name.
        name: String,
    },
    /// Deletes a key.
    Delete {
        /// Key name.
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum RetainedCmd {
    /// Lists retained messages matching a filter.
    List {
        /// Topic filter.
        #[arg(long, default_value = "#")]
        topic: String,
        /// Tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Messages per page.
        #[arg(long)]
        limit: Option<u32>,
        /// Start after this topic (the previous page's `next`).
        #[arg(long)]
        after: Option<String>,
    },
    /// Deletes the retained message of a topic.
    Delete {
        /// Topic name.
        topic: String,
        /// Tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

/// Runs `apiary ctl`; the process exit code.
pub fn run(args: CtlArgs) -> i32 {
    let given = Given {
        url: args.url,
        key: args.key,
        secret: args.secret,
        config: args.ctl_config,
        data_dir: args.data_dir,
    };
    let r = Target::resolve(given).and_then(|t| dispatch(&t, args.cmd, args.json));
    match r {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            0
        }
        Err(e) => {
            eprintln!("apiary ctl: {}", e.message);
            e.exit as i32
        }
    }
}

/// What to print: the JSON when asked, else `human` of it.
fn show(v: Value, json: bool, human: impl FnOnce(&Value) -> String) -> String {
    if json {
        serde_json::to_string_pretty(&v).unwrap_or_default()
    } else {
        human(&v)
    }
}

fn dispatch(t: &Target, cmd: CtlCmd, json: bool) -> Result<String, CtlError> {
    match cmd {
        CtlCmd::Status => status(t, json),
        CtlCmd::Clients(c) => clients(t, c, json),
        CtlCmd::Subscriptions {
            clientid,
            topic,
            match_topic,
            page,
            limit,
        } => {
            let q = query(&[
                ("clientid", clientid),
                ("topic", topic),
                ("match_topic", match_topic),
                ("page", page.map(|p| p.to_string())),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            let v = t.call("GET", &format!("/api/v5/subscriptions{q}"), None)?;
            Ok(show(v, json, |v| {
                paged(
                    v,
                    &[
                        ("CLIENT ID", "clientid"),
                        ("TOPIC", "topic"),
                        ("QOS", "qos"),
                    ],
                )
            }))
        }
        CtlCmd::Publish {
            topic,
            payload,
            qos,
            retain,
        } => {
            let body = json!({"topic": topic, "payload": payload, "qos": qos, "retain": retain});
            let v = t.call("POST", "/api/v5/publish", Some(&body))?;
            Ok(show(v, json, |v| {
                format!("published ({})", record(v).replace('\n', ", "))
            }))
        }
        CtlCmd::Plugins(p) => plugins(t, p, json),
        CtlCmd::Keys(k) => keys(t, k, json),
        CtlCmd::Retained(r) => retained(t, r, json),
        CtlCmd::Reload => {
            let v = t.call("POST", "/reload", None)?;
            Ok(show(v, json, |v| {
                let list = |k: &str| {
                    let items: Vec<&str> = v[k]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    if items.is_empty() {
                        "nothing".to_string()
                    } else {
                        items.join(", ")
                    }
                };
                format!(
                    "applied:       {}\nneeds restart: {}",
                    list("applied"),
                    list("needs_restart")
                )
            }))
        }
    }
}

/// A paged EMQX answer as a table, with its paging line.
fn paged(v: &Value, columns: &[(&str, &str)]) -> String {
    let rows = v["data"].as_array().cloned().unwrap_or_default();
    let m = &v["meta"];
    let mut out = table(&rows, columns);
    out.push_str(&format!(
        "\n({} shown; page {} of {} rows{})",
        rows.len(),
        m["page"],
        m["count"],
        if m["hasnext"] == true {
            "; more: --page N+1"
        } else {
            ""
        }
    ));
    out
}

fn status(t: &Target, json: bool) -> Result<String, CtlError> {
    let health = t.call("GET", "/healthz", None)?;
    let plugins = t.call("GET", "/plugins", None)?;
    let clients = t.call("GET", "/api/v5/clients?limit=1", None).ok();
    let v = json!({
        "url": t.url,
        "health": health,
        "sessions": clients.as_ref().map(|c| c["meta"]["count"].clone()),
        "plugins": plugins,
    });
    Ok(show(v, json, |v| {
        let names: Vec<String> = v["plugins"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        format!(
                            "{} ({})",
                            p["name"].as_str().unwrap_or("?"),
                            p["state"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "broker   {}\nhealth   {}\nsessions {}\nplugins  {}",
            v["url"].as_str().unwrap_or(""),
            v["health"]["status"].as_str().unwrap_or("?"),
            v["sessions"],
            names.join(", ")
        )
    }))
}

fn clients(t: &Target, c: ClientsCmd, json: bool) -> Result<String, CtlError> {
    match c {
        ClientsCmd::List {
            clientid,
            username,
            like_clientid,
            like_username,
            conn_state,
            ip_address,
            page,
            limit,
        } => {
            let q = query(&[
                ("clientid", clientid),
                ("username", username),
                ("like_clientid", like_clientid),
                ("like_username", like_username),
                ("conn_state", conn_state),
                ("ip_address", ip_address),
                ("page", page.map(|p| p.to_string())),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            let v = t.call("GET", &format!("/api/v5/clients{q}"), None)?;
            Ok(show(v, json, |v| {
                paged(
                    v,
                    &[
                        ("CLIENT ID", "clientid"),
                        ("USERNAME", "username"),
                        ("CONNECTED", "connected"),
                        ("IP", "ip_address"),
                        ("PROTO", "proto_ver"),
                        ("SUBS", "subscriptions_cnt"),
                        ("QUEUED", "mqueue_len"),
                    ],
                )
            }))
        }
        ClientsCmd::Show { clientid } => {
            let v = t.call("GET", &format!("/api/v5/clients/{}", enc(&clientid)), None)?;
            Ok(show(v, json, record))
        }
        ClientsCmd::Kick { clientid } => {
            t.call(
                "DELETE",
                &format!("/api/v5/clients/{}", enc(&clientid)),
                None,
            )?;
            Ok(if json {
                String::new()
            } else {
                format!("kicked {clientid}")
            })
        }
    }
}

fn plugins(t: &Target, p: PluginsCmd, json: bool) -> Result<String, CtlError> {
    match p {
        PluginsCmd::List => {
            let v = t.call("GET", "/plugins", None)?;
            Ok(show(v, json, |v| {
                let rows = v.as_array().cloned().unwrap_or_default();
                table(
                    &rows,
                    &[
                        ("NAME", "name"),
                        ("STATE", "state"),
                        ("VERSION", "version"),
                        ("ROLES", "roles"),
                        ("ERROR", "error"),
                    ],
                )
            }))
        }
        PluginsCmd::Reload { name } => {
            let v = t.call("POST", &format!("/plugins/{}/reload", enc(&name)), None)?;
            Ok(show(v, json, |v| {
                format!(
                    "reloaded {name}, version {}",
                    v["version"].as_str().unwrap_or("?")
                )
            }))
        }
        PluginsCmd::Logs { name, limit } => {
            let path = format!("/plugins/{}/logs?limit={limit}", enc(&name));
            let v = t.call("GET", &path, None)?;
            Ok(show(v, json, |v| {
                let lines = v["lines"].as_array().cloned().unwrap_or_default();
                lines
                    .iter()
                    .map(|l| {
                        let at = l["at_ms"].as_i64().unwrap_or(0);
                        let ts = time::OffsetDateTime::from_unix_timestamp_nanos(
                            i128::from(at) * 1_000_000,
                        )
                        .ok()
                        .and_then(|t| {
                            t.format(&time::format_description::well_known::Rfc3339)
                                .ok()
                        })
                        .unwrap_or_default();
                        format!(
                            "{ts} {:<5} {}",
                            l["level"].as_str().unwrap_or(""),
                            l["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }))
        }
    }
}

/// Expiry as the API takes it: Unix seconds as a number, anything else as text.
fn expiry(s: String) -> Value {
    s.parse::<u64>().map_or(Value::String(s), Value::from)
}

fn keys(t: &Target, k: KeysCmd, json: bool) -> Result<String, CtlError> {
    let key_table = |v: &Value| {
        let rows = v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
        table(
            &rows,
            &[
                ("NAME", "name"),
                ("KEY", "api_key"),
                ("TENANT", "tenant"),
                ("RIGHTS", "rights"),
                ("ENABLED", "enable"),
                ("EXPIRES", "expired_at"),
                ("LAST USED", "last_used_at"),
                ("SOURCE", "source"),
            ],
        )
    };
    let with_secret = |v: &Value| {
        let mut shown = v.clone();
        if let Some(o) = shown.as_object_mut() {
            o.remove("api_secret");
        }
        format!(
            "{}\n\nsecret: {}\n(shown only now; use it as: curl -u {}:<secret>)",
            record(&shown),
            v["api_secret"].as_str().unwrap_or(""),
            v["api_key"].as_str().unwrap_or("")
        )
    };
    let path = |name: &str| format!("/api/v5/api_key/{}", enc(name));
    match k {
        KeysCmd::List => Ok(show(
            t.call("GET", "/api/v5/api_key", None)?,
            json,
            key_table,
        )),
        KeysCmd::Show { name } => Ok(show(t.call("GET", &path(&name), None)?, json, record)),
        KeysCmd::Create {
            name,
            role,
            rights,
            tenant,
            desc,
            expires,
            signing,
            disabled,
        } => {
            let mut body =
                json!({"name": name, "tenant": tenant, "signing": signing, "enable": !disabled});
            if let Some(r) = role {
                body["role"] = r.into();
            }
            if let Some(r) = rights {
                body["rights"] = r.into();
            }
            if let Some(d) = desc {
                body["desc"] = d.into();
            }
            if let Some(e) = expires {
                body["expired_at"] = expiry(e);
            }
            let v = t.call("POST", "/api/v5/api_key", Some(&body))?;
            Ok(show(v, json, with_secret))
        }
        KeysCmd::Update {
            name,
            enable,
            disable,
            desc,
            expires,
            role,
            rights,
            tenant,
        } => {
            let mut body = json!({});
            if enable || disable {
                body["enable"] = enable.into();
            }
            for (field, v) in [("desc", desc), ("role", role), ("tenant", tenant)] {
                if let Some(v) = v {
                    body[field] = v.into();
                }
            }
            if let Some(r) = rights {
                body["rights"] = r.into();
            }
            if let Some(e) = expires {
                body["expired_at"] = expiry(e);
            }
            if body.as_object().is_some_and(|o| o.is_empty()) {
                return Err(CtlError::usage("nothing to change: give --enable, --disable, --desc, --expires, --role, --rights or --tenant"));
            }
            let v = t.call("PUT", &path(&name), Some(&body))?;
            Ok(show(v, json, record))
        }
        KeysCmd::Rotate { name } => {
            let v = t.call("POST", &format!("{}/rotate", path(&name)), None)?;
            Ok(show(v, json, with_secret))
        }
        KeysCmd::Delete { name } => {
            t.call("DELETE", &path(&name), None)?;
            Ok(if json {
                String::new()
            } else {
                format!("deleted {name}")
            })
        }
    }
}

fn retained(t: &Target, r: RetainedCmd, json: bool) -> Result<String, CtlError> {
    match r {
        RetainedCmd::List {
            topic,
            tenant,
            limit,
            after,
        } => {
            let q = query(&[
                ("tenant", Some(tenant)),
                ("topic", Some(topic)),
                ("limit", limit.map(|l| l.to_string())),
                ("after", after),
            ]);
            let v = t.call("GET", &format!("/retained{q}"), None)?;
            Ok(show(v, json, |v| {
                let rows = v["data"].as_array().cloned().unwrap_or_default();
                let mut out = table(
                    &rows,
                    &[
                        ("TOPIC", "topic"),
                        ("QOS", "qos"),
                        ("SIZE", "size"),
                        ("PAYLOAD", "payload"),
                    ],
                );
                if let Some(next) = v["meta"]["next"].as_str() {
                    out.push_str(&format!("\n(more: --after {next})"));
                }
                out
            }))
        }
        RetainedCmd::Delete { topic, tenant } => {
            let q = query(&[("tenant", Some(tenant)), ("topic", Some(topic.clone()))]);
            t.call("DELETE", &format!("/retained{q}"), None)?;
            Ok(if json {
                String::new()
            } else {
                format!("deleted the retained message of {topic}")
            })
        }
    }
}
