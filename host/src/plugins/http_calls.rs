//! The `http` role as the HTTP gateway sees it: plain request and response values, turned
//! into the WIT records here, so WIT types stay inside the plugin runtime.

use std::net::SocketAddr;

use super::bindings::exports::apiary::plugin::http as wit;
use super::runtime::LoadedPlugin;
use super::PluginError;

/// A request for a plugin's `http` role.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// Method, upper case.
    pub method: String,
    /// Path below the mount (or on the plugin's listener).
    pub path: String,
    /// Raw query string without `?`.
    pub query: String,
    /// Path and query as received below the mount (a bare trailing `?` kept).
    pub target: String,
    /// Headers, names lower case.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// The client's address.
    pub peer: Option<SocketAddr>,
}

/// A plugin's answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code as the plugin gave it.
    pub status: u16,
    /// Headers as the plugin gave them.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl LoadedPlugin {
    /// Serves one request through the `http` role.
    pub async fn serve_http(
        &self,
        engine: &wasmtime::Engine,
        req: HttpRequest,
    ) -> Result<HttpResponse, PluginError> {
        let peer = req.peer;
        let wreq = wit::Request {
            method: req.method,
            path: req.path,
            query: req.query,
            target: req.target,
            headers: req.headers,
            body: req.body,
            peer: peer.map(|p| p.to_string()),
        };
        let r = self.handle_http(engine, wreq, peer.map(|p| p.ip())).await?;
        Ok(HttpResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
    }
}
