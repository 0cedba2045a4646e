//! Beebotte's signatures: REST requests (`Authorization: <apiKey>:<base64 HMAC-SHA1>` over
//! verb, Content-MD5, Content-Type, Date and the raw request target) and socket.io
//! subscriptions (over sid, channel, resource, ttl, read, write and user id). The host
//! holds the secrets and checks the MACs (`apikeys.verify-mac`); this module builds the
//! exact strings the SDKs sign (shared/specs/beebotte-wire.md §2.1, §4.4).

use std::time::{Duration, UNIX_EPOCH};

use apiary_plugin_sdk::apikeys::{self, KeyInfo, MacAlgorithm};
use apiary_plugin_sdk::types;
use base64::Engine;
use md5::{Digest, Md5};

/// The parts of a signed REST request.
pub struct Signed<'a> {
    /// Method, upper case.
    pub verb: &'a str,
    /// `Content-MD5` as received, or empty.
    pub content_md5: &'a str,
    /// `Content-Type` as received, or empty.
    pub content_type: &'a str,
    /// `Date` as received.
    pub date: &'a str,
    /// Path and query exactly as on the wire.
    pub target: &'a str,
}

impl Signed<'_> {
    /// The string the SDKs sign.
    pub fn string_to_sign(&self, target: &str) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}",
            self.verb, self.content_md5, self.content_type, self.date, target
        )
    }
}

/// Why a signature was not accepted.
#[derive(Debug)]
pub enum SignError {
    /// Malformed or stale input, or a wrong signature: the client's fault.
    Refused(String),
    /// The host could not check it now.
    Host(types::Error),
}

/// base64(MD5(body)), as `Content-MD5` carries it.
pub fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(body))
}

/// Checks that an HTTP date (`GMT`, or Python's `-0000`) is within `window` of `now_ms`.
pub fn fresh(date: &str, now_ms: i64, window: Duration) -> Result<(), String> {
    let d = date.trim();
    let norm = match d.strip_suffix("-0000").or_else(|| d.strip_suffix("+0000")) {
        Some(head) => format!("{head}GMT"),
        None => d.to_string(),
    };
    let t = httpdate::parse_http_date(&norm).map_err(|_| format!("unreadable Date {date:?}"))?;
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    if (ms - now_ms).unsigned_abs() > window.as_millis() as u64 {
        return Err("Date too far from now (replay window)".into());
    }
    Ok(())
}

/// Splits `<key>:<base64 signature>`.
pub fn split_sig(header: &str) -> Option<(&str, Vec<u8>)> {
    let (key, sig) = header.trim().rsplit_once(':')?;
    let sig = base64::engine::general_purpose::STANDARD.decode(sig).ok()?;
    (!key.is_empty()).then_some((key, sig))
}

/// `%XX` decoded (invalid escapes kept), for the Python SDK, which signs the path before
/// `requests` quotes it.
pub fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Verifies a REST signature over the raw target (and, when the path has escapes, over
/// the path as Python signs it). On success the rest of the call acts as the key.
pub fn verify_request(auth: &str, s: &Signed) -> Result<KeyInfo, SignError> {
    let Some((key, sig)) = split_sig(auth) else {
        return Err(SignError::Refused(
            "Authorization must be <apiKey>:<base64 signature>".into(),
        ));
    };
    let mut targets = vec![s.target.to_string()];
    let (path, query) = match s.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s.target, None),
    };
    let decoded = percent_decoded(path);
    if decoded != path {
        targets.push(match query {
            Some(q) => format!("{decoded}?{q}"),
            None => decoded,
        });
    }
    for t in targets {
        let msg = s.string_to_sign(&t);
        match apikeys::verify_mac(key, MacAlgorithm::HmacSha1, msg.as_bytes(), &sig) {
            Ok(Some(k)) => return Ok(k),
            Ok(None) => {}
            Err(e) => return Err(SignError::Host(e)),
        }
    }
    Err(SignError::Refused("signature mismatch".into()))
}

/// What a socket.io subscription signature covers.
pub struct Subscription<'a> {
    /// Engine.IO session id.
    pub sid: &'a str,
    /// Channel.
    pub channel: &'a str,
    /// Resource (`*` for the whole channel).
    pub resource: &'a str,
    /// `ttl` as the client sent it (rendered as JavaScript would).
    pub ttl: String,
    /// Read access asked.
    pub read: bool,
    /// Write access asked.
    pub write: bool,
    /// The user id, when the client has one.
    pub userid: Option<&'a str>,
}

impl Subscription<'_> {
    /// The string the Node SDK signs.
    pub fn string_to_sign(&self) -> String {
        let mut s = format!(
            "{}:{}.{}:ttl={}:read={}:write={}",
            self.sid, self.channel, self.resource, self.ttl, self.read, self.write
        );
        if let Some(u) = self.userid {
            s.push_str(":userid=");
            s.push_str(u);
        }
        s
    }
}

/// Verifies `<apiKey>:<signature>` over a subscription; the key it was made with.
pub fn verify_subscription(sig: &str, sub: &Subscription) -> Result<KeyInfo, SignError> {
    let Some((key, mac)) = split_sig(sig) else {
        return Err(SignError::Refused(
            "sig must be <apiKey>:<base64 signature>".into(),
        ));
    };
    let msg = sub.string_to_sign();
    match apikeys::verify_mac(key, MacAlgorithm::HmacSha1, msg.as_bytes(), &mac) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(SignError::Refused("signature mismatch".into())),
        Err(e) => Err(SignError::Host(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_to_sign_keeps_the_raw_target() {
        let s = Signed {
            verb: "GET",
            content_md5: "",
            content_type: "",
            date: "Mon, 30 Nov 2026 06:25:08 GMT",
            target: "/v1/connections/uid-1?",
        };
        assert_eq!(
            s.string_to_sign(s.target),
            "GET\n\n\nMon, 30 Nov 2026 06:25:08 GMT\n/v1/connections/uid-1?"
        );
    }

    #[test]
    fn both_date_spellings_and_the_window() {
        let now = 1_796_019_908_000; // Mon, 30 Nov 2026 06:25:08 GMT
        let w = Duration::from_secs(900);
        assert!(fresh("Mon, 30 Nov 2026 06:25:08 GMT", now, w).is_ok());
        assert!(fresh("Mon, 30 Nov 2026 06:25:23 -0000", now, w).is_ok());
        assert!(fresh("Mon, 30 Nov 2026 08:25:08 GMT", now, w).is_err());
        assert!(fresh("yesterday", now, w).is_err());
    }

    #[test]
    fn subscription_string_matches_the_wire_document() {
        let s = Subscription {
            sid: "IZNhffP2jia316mrAAAA",
            channel: "private-demo",
            resource: "res",
            ttl: "0".into(),
            read: true,
            write: false,
            userid: Some("uid-a"),
        };
        assert_eq!(
            s.string_to_sign(),
            "IZNhffP2jia316mrAAAA:private-demo.res:ttl=0:read=true:write=false:userid=uid-a"
        );
    }

    #[test]
    fn md5_and_decoding() {
        // RFC 1864 style: base64 of the 16-byte digest.
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
        assert_eq!(percent_decoded("/a%20b%2"), "/a b%2");
        assert!(split_sig("k:not base64!").is_none());
        assert_eq!(split_sig("k:AAAA").unwrap().0, "k");
    }
}
