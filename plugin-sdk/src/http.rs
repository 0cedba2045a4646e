//! The `http` role: requests and responses, a small router (method + path pattern with
//! `{param}` segments), query-string and JSON helpers, and errors that become responses.

use std::collections::HashMap;

pub use crate::http_role::exports::apiary::plugin::http::{Request, Response};

/// What a plugin serving HTTP implements; `export!(T: http)` wires it up.
pub trait Handler {
    /// Answers one request. `req.path` is relative to the plugin's mount.
    fn handle(req: Request) -> Response;
}

impl Response {
    /// A response with a JSON body.
    pub fn json<T: serde::Serialize + ?Sized>(status: u16, body: &T) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }

    /// A response with a plain-text body.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: body.into().into_bytes(),
        }
    }

    /// A response with no body (e.g. 204).
    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

impl Request {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated query parameter, in order, percent-decoded.
    pub fn query_all(&self, name: &str) -> Vec<String> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k) == name).then(|| decode(v))
            })
            .collect()
    }

    /// Query parameters, percent-decoded (`+` as space). Later duplicates win.
    pub fn query_params(&self) -> HashMap<String, String> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Percent-decodes a query component (`+` as space; malformed escapes kept as is).
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 3 <= b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (c, None) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An error that becomes a JSON response `{"code": .., "message": ..}`.
#[derive(Debug, Clone)]
pub struct HttpError {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

impl HttpError {
    /// Any status and code.
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// 400 `INVALID_PARAMETER`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "INVALID_PARAMETER", message)
    }

    /// 404 `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "NOT_FOUND", message)
    }
}

impl From<HttpError> for Response {
    fn from(e: HttpError) -> Response {
        Response::json(
            e.status,
            &serde_json::json!({"code": e.code, "message": e.message}),
        )
    }
}

/// Path parameters captured by a route pattern.
#[derive(Debug, Default, Clone)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// The value of `{name}` in the matched pattern.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

type Route = (
    String,
    Vec<String>,
    Box<dyn Fn(&Request, &Params) -> Response>,
);

/// Method + path-pattern dispatch. Patterns are `/`-separated; a `{name}` segment
/// captures one segment (percent-decoded). Unknown paths get 404, known paths with
/// another method 405, both as JSON.
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route for any method.
    pub fn route(
        mut self,
        method: &str,
        pattern: &str,
        f: impl Fn(&Request, &Params) -> Response + 'static,
    ) -> Self {
        let segs = pattern
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        self.routes
            .push((method.to_ascii_uppercase(), segs, Box::new(f)));
        self
    }

    /// Adds a GET route.
    pub fn get(self, pattern: &str, f: impl Fn(&Request, &Params) -> Response + 'static) -> Self {
        self.route("GET", pattern, f)
    }

    /// Adds a POST route.
    pub fn post(self, pattern: &str, f: impl Fn(&Request, &Params) -> Response + 'static) -> Self {
        self.route("POST", pattern, f)
    }

    /// Adds a PUT route.
    pub fn put(self, pattern: &str, f: impl Fn(&Request, &Params) -> Response + 'static) -> Self {
        self.route("PUT", pattern, f)
    }

    /// Adds a DELETE route.
    pub fn delete(
        self,
        pattern: &str,
        f: impl Fn(&Request, &Params) -> Response + 'static,
    ) -> Self {
        self.route("DELETE", pattern, f)
    }

    /// Runs the matching route.
    pub fn dispatch(&self, req: Request) -> Response {
        let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        let mut path_matched = false;
        for (method, pattern, f) in &self.routes {
            let Some(params) = matches(pattern, &segs) else {
                continue;
            };
            path_matched = true;
            if method == &req.method {
                return f(&req, &params);
            }
        }
        if path_matched {
            HttpError::new(
                405,
                "METHOD_NOT_ALLOWED",
                format!("{} not allowed here", req.method),
            )
            .into()
        } else {
            HttpError::not_found(format!("no route for {}", req.path)).into()
        }
    }
}

fn matches(pattern: &[String], segs: &[&str]) -> Option<Params> {
    if pattern.len() != segs.len() {
        return None;
    }
    let mut p = HashMap::new();
    for (pat, seg) in pattern.iter().zip(segs) {
        if let Some(name) = pat.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
            p.insert(name.to_string(), decode(seg));
        } else if pat != seg {
            return None;
        }
    }
    Some(Params(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, query: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            target: format!("{path}?{query}"),
            headers: vec![("X-Thing".into(), "1".into())],
            body: b"{\"a\":1}".to_vec(),
            peer: None,
        }
    }

    #[test]
    fn routing_params_and_errors() {
        let r = Router::new()
            .get("/clients/{id}", |_, p| {
                Response::text(200, p.get("id").unwrap_or(""))
            })
            .delete("/clients/{id}", |_, _| Response::empty(204));
        let ok = r.dispatch(req("GET", "/clients/a%2Fb", ""));
        assert_eq!((ok.status, ok.body), (200, b"a/b".to_vec()));
        assert_eq!(r.dispatch(req("DELETE", "/clients/x", "")).status, 204);
        assert_eq!(r.dispatch(req("PUT", "/clients/x", "")).status, 405);
        assert_eq!(r.dispatch(req("GET", "/nope", "")).status, 404);
    }

    #[test]
    fn query_headers_json() {
        let r = req("GET", "/", "a=1&b=x+y&c=%41&d");
        let q = r.query_params();
        assert_eq!(
            (
                q["a"].as_str(),
                q["b"].as_str(),
                q["c"].as_str(),
                q["d"].as_str()
            ),
            ("1", "x y", "A", "")
        );
        assert_eq!(r.header("x-thing"), Some("1"));
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
    }
}
