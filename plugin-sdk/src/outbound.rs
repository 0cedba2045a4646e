//! Outbound HTTP from a plugin (`wasi:http/outgoing-handler`): one blocking request and
//! its whole response. The host sends it only to an origin the plugin's toml grants
//! (`[outbound_http] allowed_hosts`); anything else fails with `HTTP-request-denied`.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasip2::io::streams::StreamError;

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body, its first `max_body` bytes.
    pub body: Vec<u8>,
    /// Whether the body was longer than `max_body` (the rest was read and discarded).
    pub truncated: bool,
}

/// Why a request failed: refused by the host (not granted, no slot), or the transport's
/// error, as the host reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error(format!("{what}: {e:?}"))
}

/// Sends `method url` with `headers` and `body`; returns the response once its body is
/// read (the first `max_body` bytes kept; 0 when only the status matters).
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
    max_body: usize,
) -> Result<Response, Error> {
    let req = request(method, url, headers, body.len())?;
    let out = req.body().map_err(|_| Error("request body taken".into()))?;
    let pending = outgoing_handler::handle(req, None).map_err(|e| err("refused", e))?;
    let wait = || loop {
        match pending.get() {
            Some(r) => break r,
            None => pending.subscribe().block(),
        }
    };
    let written = (|| {
        let stream = out
            .write()
            .map_err(|_| Error("request body stream".into()))?;
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| err("writing the body", e))?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        // The host refused or failed the request (the body had nowhere to go): its
        // reason is the one to report.
        drop(out);
        return match wait() {
            Ok(Err(code)) => Err(err("request failed", code)),
            _ => Err(e),
        };
    }
    OutgoingBody::finish(out, None).map_err(|e| err("finishing the body", e))?;
    let resp = wait()
        .map_err(|_| Error("response taken twice".into()))?
        .map_err(|e| err("request failed", e))?;
    read(resp, max_body)
}

/// The request for `method url` with `headers` (and a content length for a body of
/// `body_len` bytes).
fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &[u8])],
    body_len: usize,
) -> Result<OutgoingRequest, Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error(format!("{url:?} is not an absolute URL")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_vec()))
        .collect();
    // A length rather than chunks: what webhook receivers handle best.
    if body_len > 0 && !fields.iter().any(|(k, _)| k == "content-length") {
        fields.push(("content-length".into(), body_len.to_string().into_bytes()));
    }
    let fields = Fields::from_list(&fields).map_err(|e| err("headers", e))?;
    let req = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        other => Method::Other(other.into()),
    };
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.into()),
    };
    let bad = |what: &str| Error(format!("invalid {what} in {url:?}"));
    req.set_method(&method).map_err(|_| bad("method"))?;
    req.set_scheme(Some(&scheme)).map_err(|_| bad("scheme"))?;
    req.set_authority(Some(authority))
        .map_err(|_| bad("authority"))?;
    req.set_path_with_query(Some(path))
        .map_err(|_| bad("path"))?;
    Ok(req)
}

/// `resp` with the first `max_body` bytes of its body.
fn read(resp: IncomingResponse, max_body: usize) -> Result<Response, Error> {
    let status = resp.status();
    let headers = resp.headers().entries();
    let incoming = resp.consume().map_err(|_| Error("response body".into()))?;
    let stream = incoming
        .stream()
        .map_err(|_| Error("response body".into()))?;
    let (mut body, mut truncated) = (Vec::new(), false);
    loop {
        match stream.blocking_read(65536) {
            Ok(chunk) => {
                let room = max_body.saturating_sub(body.len());
                truncated |= chunk.len() > room;
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Err(StreamError::Closed) => break,
            Err(e) => return Err(err("reading the response", e)),
        }
    }
    Ok(Response {
        status,
        headers,
        body,
        truncated,
    })
}
