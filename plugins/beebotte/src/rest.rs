//! The REST API at `/v1/...` (Beebotte's paths at the root of the plugin's listener):
//! authentication (signed requests or `X-Auth-Token`), Beebotte's error envelope, and
//! routing to the connections, data and token handlers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use apiary_plugin_sdk::http::{Request, Response};
use apiary_plugin_sdk::keyauth::{self, KeyError};
use apiary_plugin_sdk::{clock, types};
use serde_json::json;

use crate::account::Account;
use crate::sign::{self, SignError, Signed};
use crate::{connections, data, tokens, tokens_admin, DATE_WINDOW_SECS};

/// Beebotte's error envelope: `{"error":{"code":N,"message":".."}}` (the Python SDK reads
/// both fields of every error answer).
pub fn error(status: u16, code: u32, message: impl Into<String>) -> Response {
    let m: String = message.into();
    Response::json(status, &json!({"error": {"code": code, "message": m}}))
}

/// 400/1101: the only authentication failure the Python SDK reports as such.
pub fn auth_error(message: impl Into<String>) -> Response {
    error(400, 1101, message)
}

/// 405/1102: authenticated, but without the right.
pub fn not_allowed(message: impl Into<String>) -> Response {
    error(405, 1102, message)
}

/// 400/1401: a bad parameter.
pub fn bad_parameter(message: impl Into<String>) -> Response {
    error(400, 1401, message)
}

/// A host call that failed, in Beebotte's terms.
pub fn host_error(e: types::Error) -> Response {
    match e {
        types::Error::PermissionDenied(m) | types::Error::Refused(m) => not_allowed(m),
        types::Error::InvalidArgument(m) => bad_parameter(m),
        types::Error::NotFound(m) => error(404, 1301, m),
        types::Error::QuotaExceeded(m) => error(400, 1406, m),
        types::Error::Unavailable(m) => error(500, 1201, m),
    }
}

/// Whether an admin route may also take HTTP basic auth with an API key (operators'
/// curl); Beebotte's own routes take only its schemes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Basic {
    Allowed,
    Refused,
}

/// The caller: a token (`X-Auth-Token` or `?token=`) or a signed request.
fn authenticate(req: &Request, basic: Basic) -> Result<Account, Response> {
    let token = req
        .header("x-auth-token")
        .map(str::to_string)
        .or_else(|| req.query_params().remove("token"));
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        return match tokens::find(&t) {
            Ok(Some(tok)) => Ok(tok.account()),
            Ok(None) => Err(auth_error("invalid token")),
            Err(e) => Err(host_error(e)),
        };
    }
    let Some(authz) = req.header("authorization") else {
        return Err(auth_error(
            "authentication required: a signed request or X-Auth-Token",
        ));
    };
    if authz.starts_with("Basic ") {
        if basic == Basic::Refused {
            return Err(auth_error(
                "sign the request (Authorization: <apiKey>:<signature>)",
            ));
        }
        return match keyauth::api_key(req) {
            Ok(k) => Ok(Account::of_key(&k)),
            Err(KeyError::Host(e)) => Err(host_error(e)),
            Err(e) => Err(auth_error(e.message())),
        };
    }
    signed(req, authz).map(|k| Account::of_key(&k))
}

/// Checks a signed request: Date present and fresh, Content-MD5 on bodies, the MAC.
fn signed(req: &Request, authz: &str) -> Result<apiary_plugin_sdk::apikeys::KeyInfo, Response> {
    let Some(date) = req.header("date") else {
        return Err(auth_error("a signed request needs a Date header"));
    };
    let window = Duration::from_secs(DATE_WINDOW_SECS.load(Ordering::Relaxed));
    sign::fresh(date, clock::now_ms(), window).map_err(auth_error)?;
    let md5 = req.header("content-md5").unwrap_or("");
    if matches!(req.method.as_str(), "POST" | "PUT") && md5 != sign::content_md5(&req.body) {
        return Err(auth_error("Content-MD5 missing or not the MD5 of the body"));
    }
    let s = Signed {
        verb: &req.method,
        content_md5: md5,
        content_type: req.header("content-type").unwrap_or(""),
        date,
        target: &req.target,
    };
    match sign::verify_request(authz, &s) {
        Ok(k) => Ok(k),
        Err(SignError::Refused(m)) => Err(auth_error(m)),
        Err(SignError::Host(e)) => Err(host_error(e)),
    }
}

/// A path segment with `%XX` escapes decoded.
fn segment(s: &str) -> String {
    crate::sign::percent_decoded(s)
}

/// A route of the API, with what its path names.
enum Route<'a> {
    /// `GET /v1/connections[/{userid}]`.
    List(Option<&'a str>),
    /// `DELETE /v1/connections/drop/{userid}`.
    Drop(&'a str),
    /// `POST /v1/data/{publish|write}/{channel}` (`true`: write).
    Bulk(bool, &'a str),
    /// `POST /v1/data/{publish|write}/{channel}/{resource}` (`true`: write).
    One(bool, &'a str, &'a str),
    /// `GET /v1/data/read/{channel}/{resource}`.
    Read(&'a str, &'a str),
    /// `GET /v1/apiary/tokens`.
    Tokens,
    /// `POST /v1/apiary/tokens`.
    NewToken,
    /// `DELETE /v1/apiary/tokens/{id}`.
    Revoke(&'a str),
}

fn route<'a>(m: &str, s: &[&'a str]) -> Option<Route<'a>> {
    Some(match (m, s) {
        ("GET", ["v1", "connections"]) => Route::List(None),
        ("GET", ["v1", "connections", u]) => Route::List(Some(u)),
        ("DELETE", ["v1", "connections", "drop", u]) => Route::Drop(u),
        ("POST", ["v1", "data", op @ ("publish" | "write"), c]) => Route::Bulk(*op == "write", c),
        ("POST", ["v1", "data", op @ ("publish" | "write"), c, r]) => {
            Route::One(*op == "write", c, r)
        }
        ("GET", ["v1", "data", "read", c, r]) => Route::Read(c, r),
        ("GET", ["v1", "apiary", "tokens"]) => Route::Tokens,
        ("POST", ["v1", "apiary", "tokens"]) => Route::NewToken,
        ("DELETE", ["v1", "apiary", "tokens", id]) => Route::Revoke(id),
        _ => return None,
    })
}

/// Serves one request: routed first (an unknown route costs no credential check), then
/// authenticated.
pub fn handle(req: Request) -> Response {
    let segs: Vec<String> = req
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(segment)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = req.method.as_str();
    let Some(r) = route(m, &s) else {
        if let ["v1", "public", ..] = s.as_slice() {
            return error(
                404,
                1301,
                "no public channels: Apiary has no channel registry",
            );
        }
        return error(404, 1301, format!("no route {m} {}", req.path));
    };
    let basic = if matches!(r, Route::Tokens | Route::NewToken | Route::Revoke(_)) {
        Basic::Allowed
    } else {
        Basic::Refused
    };
    let acc = match authenticate(&req, basic) {
        Ok(a) => a,
        Err(r) => return r,
    };
    match r {
        Route::List(u) => connections::list(&acc, u, &req),
        Route::Drop(u) => connections::drop(&acc, u, &req),
        Route::Bulk(write, c) => data::bulk(&acc, write, c, &req),
        Route::One(write, c, r) => data::one(&acc, write, c, r, &req),
        Route::Read(c, r) => data::read(&acc, c, r, &req),
        Route::Tokens => tokens_admin::list(&acc),
        Route::NewToken => tokens_admin::create(&acc, &req),
        Route::Revoke(id) => tokens_admin::revoke(&acc, id),
    }
}
