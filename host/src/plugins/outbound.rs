//! Outbound HTTP for plugins (`wasi:http/outgoing-handler`), granted per plugin as a list
//! of allowed origins in its toml (`[outbound_http] allowed_hosts`, as Spin's
//! `allowed_outbound_hosts`), with a timeout and a concurrency limit; every request to an
//! origin not granted is refused with `HTTP-request-denied`, and all of it is counted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use serde::Deserialize;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// `[outbound_http]` in a plugin's toml (nothing granted by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundSettings {
    /// Origins it may call: `scheme://host[:port]`, where host may be `*` or start with
    /// `*.` and port may be `*` (default: the scheme's), e.g. `"http://127.0.0.1:*"`.
    pub allowed_hosts: Vec<String>,
    /// Longest a request may take to connect, to its first response byte, and between
    /// bytes, in ms.
    pub timeout_ms: u64,
    /// Requests of the plugin in flight at once; more wait (up to `timeout_ms`), then
    /// fail with `connection-limit-reached`.
    pub max_concurrent: usize,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            timeout_ms: 5000,
            max_concurrent: 8,
        }
    }
}

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

impl Origin {
    fn parse(s: &str) -> Result<Self, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("{s:?}: write scheme://host[:port]"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("{s:?}: the scheme must be http or https"));
        }
        // `[v6]` or `[v6]:port`: the colons inside the brackets are the address's.
        let split = match rest.rfind(']') {
            Some(end) => rest[end..]
                .rsplit_once(':')
                .map(|(_, p)| (&rest[..=end], p)),
            None => rest.rsplit_once(':'),
        };
        let (host, port) = match split {
            Some((h, "*")) => (h, None),
            Some((h, p)) => (
                h,
                Some(p.parse().map_err(|_| format!("{s:?}: bad port {p:?}"))?),
            ),
            None => (rest, Some(default_port(scheme))),
        };
        let bare = host.strip_prefix("*.").unwrap_or(host);
        if host.is_empty() || (host != "*" && bare.contains(['/', '*', '@'])) {
            return Err(format!("{s:?}: bad host {host:?}"));
        }
        Ok(Origin {
            scheme: scheme.into(),
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host_ok = match self.host.strip_prefix("*.") {
            _ if self.host == "*" => true,
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
            None => self.host == host,
        };
        self.scheme == scheme && host_ok && self.port.is_none_or(|p| p == port)
    }
}

/// Checks an `[outbound_http]` table (at manifest load).
pub fn check(s: &OutboundSettings) -> Result<(), String> {
    for h in &s.allowed_hosts {
        Origin::parse(h)?;
    }
    if s.timeout_ms == 0 || s.max_concurrent == 0 {
        return Err("outbound_http.timeout_ms and max_concurrent must be positive".into());
    }
    Ok(())
}

/// A plugin's grant and figures, shared by its instances.
#[derive(Debug)]
pub struct Outbound {
    allowed: Vec<Origin>,
    timeout: Duration,
    slots: Arc<tokio::sync::Semaphore>,
    plugin: String,
    /// Counted in the plugin's figures (`apiary_plugin_outbound_*_total`).
    stats: Arc<super::stats::PluginStats>,
}

impl Outbound {
    /// The grant of `plugin` (its settings were checked at load).
    pub fn new(plugin: &str, s: &OutboundSettings, stats: Arc<super::stats::PluginStats>) -> Self {
        Self {
            allowed: s
                .allowed_hosts
                .iter()
                .filter_map(|h| Origin::parse(h).ok())
                .collect(),
            timeout: Duration::from_millis(s.timeout_ms),
            slots: Arc::new(tokio::sync::Semaphore::new(s.max_concurrent)),
            plugin: plugin.into(),
            stats,
        }
    }

    fn allows(&self, uri: &http::Uri) -> bool {
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return false;
        };
        let port = uri.port_u16().unwrap_or_else(|| default_port(scheme));
        let host = host.to_ascii_lowercase();
        self.allowed.iter().any(|o| o.allows(scheme, &host, port))
    }

    /// Counts and logs a refusal; `e` is what the guest is told.
    fn refuse(&self, uri: &http::Uri, e: Error, why: &str) -> Error {
        self.stats.outbound_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(plugin = %self.plugin, %uri, "outbound HTTP request refused: {why}");
        e
    }
}

type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

/// The hooks of one instance's `wasi:http`: its plugin's grant.
pub struct Hooks(pub Arc<Outbound>);

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn std::future::Future<Output = Sent> + Send> {
        drop(fut);
        let o = self.0.clone();
        Box::new(async move {
            o.stats.outbound_requests.fetch_add(1, Ordering::Relaxed);
            let uri = request.uri().clone();
            if !o.allows(&uri) {
                let why = "its origin is not in outbound_http.allowed_hosts";
                return Err(o.refuse(&uri, Error::HttpRequestDenied, why));
            }
            let slot = tokio::time::timeout(o.timeout, o.slots.clone().acquire_owned()).await;
            let Ok(Ok(slot)) = slot else {
                let why = "no slot within timeout_ms (max_concurrent)";
                return Err(o.refuse(&uri, Error::ConnectionLimitReached, why));
            };
            let cap = |d: Option<Duration>| Some(d.map_or(o.timeout, |d| d.min(o.timeout)));
            let opts = options.unwrap_or_default();
            let opts = RequestOptions {
                connect_timeout: cap(opts.connect_timeout),
                first_byte_timeout: cap(opts.first_byte_timeout),
                between_bytes_timeout: cap(opts.between_bytes_timeout),
            };
            match wasmtime_wasi_http::default_send_request(request, Some(opts)).await {
                Ok((res, io)) => {
                    let io = async move {
                        let r = io.await;
                        drop(slot);
                        r
                    };
                    Ok((
                        res.map(BodyExt::boxed_unsync),
                        Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
                    ))
                }
                Err(e) => {
                    o.stats.outbound_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(plugin = %o.plugin, %uri, error = %e, "outbound HTTP request failed");
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(hosts: &[&str]) -> Outbound {
        let s = OutboundSettings {
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        };
        check(&s).unwrap();
        Outbound::new("t", &s, Default::default())
    }

    #[test]
    fn origins_match_scheme_host_and_port() {
        let g = grant(&[
            "http://127.0.0.1:*",
            "https://*.example.com",
            "http://a.test",
        ]);
        let ok = |u: &str| g.allows(&u.parse().unwrap());
        assert!(ok("http://127.0.0.1:8080/x"));
        assert!(!ok("https://127.0.0.1:8080/x"), "scheme");
        assert!(ok("https://hooks.example.com/x"));
        assert!(!ok("https://example.com/x"), "*. needs a subdomain");
        assert!(!ok("https://evilexample.com/x"));
        assert!(!ok("https://hooks.example.com:8443/x"), "default port only");
        assert!(ok("http://A.test/"));
        assert!(!ok("http://a.test:81/"));
        assert!(!ok("http://b.test/"));
        assert!(!grant(&[]).allows(&"http://127.0.0.1/".parse().unwrap()));
        let v6 = grant(&["http://[::1]", "http://[::1]:9000"]);
        assert!(v6.allows(&"http://[::1]/".parse().unwrap()));
        assert!(v6.allows(&"http://[::1]:9000/".parse().unwrap()));
        assert!(!v6.allows(&"http://[::1]:9001/".parse().unwrap()));
        for bad in [
            "127.0.0.1",
            "ftp://x",
            "http://x:port",
            "http://",
            "http://a/b",
        ] {
            let s = OutboundSettings {
                allowed_hosts: vec![bad.into()],
                ..Default::default()
            };
            assert!(check(&s).is_err(), "{bad}");
        }
    }
}
