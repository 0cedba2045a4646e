//! BifroMQ's API takes every parameter as an HTTP header, matched case-insensitively with
//! its underscores. Parsing them, with the 400 answers that name the header at fault.

use apiary_plugin_sdk::http::{Request, Response};

/// A request that cannot be served as sent: 400 with a plain-text reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadHeader(pub String);

impl From<BadHeader> for Response {
    fn from(b: BadHeader) -> Response {
        Response::text(400, b.0)
    }
}

/// A required header's value.
pub fn required<'a>(req: &'a Request, name: &str) -> Result<&'a str, BadHeader> {
    req.header(name)
        .ok_or_else(|| BadHeader(format!("missing required header {name}")))
}

/// An optional header parsed by `parse`; a value that does not parse is a 400.
pub fn optional<T>(
    req: &Request,
    name: &str,
    parse: impl Fn(&str) -> Option<T>,
    what: &str,
) -> Result<Option<T>, BadHeader> {
    match req.header(name) {
        None => Ok(None),
        Some(v) => parse(v.trim())
            .map(Some)
            .ok_or_else(|| BadHeader(format!("header {name} must be {what}, not {v:?}"))),
    }
}

/// A required header parsed by `parse`.
pub fn parsed<T>(
    req: &Request,
    name: &str,
    parse: impl Fn(&str) -> Option<T>,
    what: &str,
) -> Result<T, BadHeader> {
    optional(req, name, parse, what)?
        .ok_or_else(|| BadHeader(format!("missing required header {name}")))
}

/// A QoS: "0", "1" or "2".
pub fn qos(v: &str) -> Option<u8> {
    match v {
        "0" => Some(0),
        "1" => Some(1),
        "2" => Some(2),
        _ => None,
    }
}

/// A boolean as Java's `Boolean.valueOf` accepts it, but strict: "true" or "false", any
/// case; anything else is an error rather than a silent false.
pub fn boolean(v: &str) -> Option<bool> {
    if v.eq_ignore_ascii_case("true") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// The `req_id` header, checked (an int64) and echoed in the answer when present.
pub fn req_id(req: &Request) -> Result<Option<i64>, BadHeader> {
    optional(req, "req_id", |v| v.parse().ok(), "an int64")
}

/// `client_meta_*` headers, for the log.
pub fn client_meta(req: &Request) -> Vec<(String, String)> {
    req.headers
        .iter()
        .filter(|(k, _)| {
            k.len() > "client_meta_".len()
                && k[.."client_meta_".len()].eq_ignore_ascii_case("client_meta_")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "PUT".into(),
            path: "/sub".into(),
            query: String::new(),
            target: "/sub".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
            peer: None,
        }
    }

    #[test]
    fn headers_are_found_case_insensitively_and_errors_name_them() {
        let r = req(&[
            ("Tenant_ID", "t1"),
            ("sub_qos", "3"),
            ("req_id", "x"),
            ("retain", "TRUE"),
            ("client_meta_app", "cli"),
            ("client_meta_", "no name"),
        ]);
        assert_eq!(required(&r, "tenant_id"), Ok("t1"));
        assert!(required(&r, "inbox_id").unwrap_err().0.contains("inbox_id"));
        assert!(parsed(&r, "sub_qos", qos, "0, 1 or 2")
            .unwrap_err()
            .0
            .contains("sub_qos"));
        assert!(req_id(&r).unwrap_err().0.contains("req_id"));
        assert_eq!(
            optional(&r, "retain", boolean, "true or false"),
            Ok(Some(true))
        );
        assert_eq!(optional(&r, "nothing", boolean, "true or false"), Ok(None));
        assert_eq!(boolean("yes"), None);
        assert_eq!(
            client_meta(&r),
            vec![("client_meta_app".into(), "cli".into())]
        );
    }
}
