//! The admin API client of `apiary ctl`: where the broker is and which key to use (flags,
//! then `APIARY_URL`/`APIARY_KEY`/`APIARY_SECRET`, then a config file, then the first
//! key in `data/api-keys.txt` of a broker started in this directory), one blocking
//! request at a time, and failures mapped to exit codes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// What `apiary ctl` exits with, by what went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The broker refused or failed the request (4xx other than below, 5xx).
    Refused = 1,
    /// Bad arguments or settings (no key, a bad config file).
    Usage = 2,
    /// The broker could not be reached.
    Unreachable = 3,
    /// 401, 403 or 429: the key is wrong, disabled, expired or lacks the right, or this
    /// address failed too many logins.
    Auth = 4,
    /// 404: no such client, plugin, key or message.
    NotFound = 5,
}

/// A failure to report: what to print, and the exit code.
#[derive(Debug)]
pub struct CtlError {
    /// Exit code.
    pub exit: Exit,
    /// What to print on stderr.
    pub message: String,
}

impl CtlError {
    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        CtlError {
            exit: Exit::Usage,
            message: message.into(),
        }
    }
}

/// The settings file (`--ctl-config`, `APIARY_CTL_CONFIG`, or
/// `~/.config/apiary/ctl.toml`).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    url: Option<String>,
    key: Option<String>,
    secret: Option<String>,
}

/// Where to find the broker and how to log in (`Debug` hides the secret).
#[derive(Clone)]
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:18083`.
    pub url: String,
    key: String,
    secret: String,
}

/// Flags and environment, as parsed (no `Debug`: it holds the secret).
#[derive(Default)]
pub struct Given {
    /// `--url` / `APIARY_URL`.
    pub url: Option<String>,
    /// `--key` / `APIARY_KEY`.
    pub key: Option<String>,
    /// `--secret` / `APIARY_SECRET`.
    pub secret: Option<String>,
    /// `--ctl-config` / `APIARY_CTL_CONFIG`.
    pub config: Option<PathBuf>,
    /// `--data-dir`: a local broker's data dir.
    pub data_dir: PathBuf,
}

fn read_settings(given: &Given) -> Result<FileSettings, CtlError> {
    let path = match &given.config {
        Some(p) => p.clone(),
        None => match std::env::var_os("HOME") {
            Some(h) => Path::new(&h).join(".config/apiary/ctl.toml"),
            None => return Ok(FileSettings::default()),
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            toml::from_str(&text).map_err(|e| CtlError::usage(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && given.config.is_none() => {
            Ok(FileSettings::default())
        }
        Err(e) => Err(CtlError::usage(format!("{}: {e}", path.display()))),
    }
}

/// The first `key:secret:...` line of a local broker's `api-keys.txt`.
fn local_key(data_dir: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(data_dir.join("api-keys.txt")).ok()?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))?;
    let mut parts = line.splitn(3, ':');
    Some((parts.next()?.to_string(), parts.next()?.to_string()))
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Resolves the settings: flags and environment first, then the file, then a local
    /// broker's first key.
    pub fn resolve(given: Given) -> Result<Target, CtlError> {
        let file = read_settings(&given)?;
        let url = given
            .url
            .clone()
            .or(file.url)
            .unwrap_or_else(|| "http://127.0.0.1:18083".into());
        let (key, secret) = match (
            given.key.clone().or(file.key),
            given.secret.clone().or(file.secret),
        ) {
            (Some(k), Some(s)) => (k, s),
            (None, None) => local_key(&given.data_dir).ok_or_else(|| {
                CtlError::usage(
                    "no API key: give --key and --secret (or APIARY_KEY and APIARY_SECRET, or \
                     key/secret in ~/.config/apiary/ctl.toml), or run in the directory of a \
                     broker whose data/api-keys.txt holds one",
                )
            })?,
            _ => return Err(CtlError::usage("give both a key and a secret")),
        };
        Ok(Target {
            url: url.trim_end_matches('/').to_string(),
            key,
            secret,
        })
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into()
    }

    /// One request; the JSON answer (Null for an empty body), or the failure.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CtlError> {
        use base64::Engine as _;
        let url = format!("{}{path}", self.url);
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.key, self.secret));
        let agent = Self::agent();
        let auth = format!("Basic {auth}");
        let r = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
            (m, b) => {
                let req = match m {
                    "PUT" => agent.put(&url),
                    _ => agent.post(&url),
                };
                let req = req.header("Authorization", &auth);
                match b {
                    Some(v) => req.send_json(v),
                    None => req.send_empty(),
                }
            }
        };
        let mut resp = r.map_err(|e| CtlError {
            exit: Exit::Unreachable,
            message: format!("cannot reach the broker at {}: {e}", self.url),
        })?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let json: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status < 300 {
            return Ok(json);
        }
        let exit = match status {
            401 | 403 | 429 => Exit::Auth,
            404 => Exit::NotFound,
            _ => Exit::Refused,
        };
        let why = json["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| json.to_string());
        Err(CtlError {
            exit,
            message: format!("{method} {path}: {status}: {why}"),
        })
    }
}

/// Percent-encodes a query value or path segment.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?a=1&b=2` from the pairs given (None skipped).
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// A cell's text: strings bare, null empty, the rest as JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// An aligned table of `rows` (JSON objects) under `columns` (header, field).
pub fn table(rows: &[Value], columns: &[(&str, &str)]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|(_, f)| cell(&r[*f])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<String>| {
        let padded: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(columns.iter().map(|(h, _)| h.to_string()).collect())];
    out.extend(cells.into_iter().map(line));
    out.join("\n")
}

/// `field: value` lines of an object, for one record.
pub fn record(v: &Value) -> String {
    match v.as_object() {
        Some(o) => {
            let w = o.keys().map(|k| k.len()).max().unwrap_or(0);
            o.iter()
                .map(|(k, v)| format!("{k:<w$}  {}", cell(v)))
                .collect::<Vec<_>>()
                .join("\n")
        }
        None => cell(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_queries_encode() {
        let rows = [
            serde_json::json!({"a": "x", "b": 1}),
            serde_json::json!({"a": "longer", "b": null}),
        ];
        assert_eq!(
            table(&rows, &[("A", "a"), ("B", "b")]),
            "A       B\nx       1\nlonger"
        );
        assert_eq!(
            query(&[
                ("topic", Some("a/#".into())),
                ("x", None),
                ("n", Some("1".into()))
            ]),
            "?topic=a%2F%23&n=1"
        );
        assert_eq!(query(&[("x", None)]), "");
    }

    #[test]
    fn a_local_broker_key_is_found_and_half_given_credentials_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("api-keys.txt"),
            "# c\nk1:s1:admin:tenant=*\n",
        )
        .unwrap();
        let given = |key: Option<&str>, secret: Option<&str>| Given {
            key: key.map(String::from),
            secret: secret.map(String::from),
            config: Some(dir.path().join("none.toml")),
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        // An explicit config file that is missing is an error, not silently skipped.
        assert_eq!(
            Target::resolve(given(None, None)).unwrap_err().exit,
            Exit::Usage
        );
        std::fs::write(dir.path().join("none.toml"), "url = \"http://h:1/\"\n").unwrap();
        let t = Target::resolve(given(None, None)).unwrap();
        assert_eq!((t.url.as_str(), t.key.as_str()), ("http://h:1", "k1"));
        assert_eq!(
            Target::resolve(given(Some("k"), None)).unwrap_err().exit,
            Exit::Usage
        );
        assert_eq!(
            Target::resolve(given(Some("k"), Some("s"))).unwrap().key,
            "k"
        );
    }
}
