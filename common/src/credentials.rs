//! HTTP credentials: the `Authorization: Basic base64(key:secret)` header, as the native
//! admin routes and every admin API plugin read it.

use base64::Engine as _;

/// The key and secret of a `Basic` authorization header value (scheme matched
/// case-insensitively); None when it is not one.
pub fn basic(header: &str) -> Option<(String, String)> {
    let (scheme, b64) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (k, s) = text.split_once(':')?;
    Some((k.to_string(), s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_headers() {
        // "ops:s3:cret" — the secret may hold colons, the key may not.
        assert_eq!(
            basic("Basic b3BzOnMzOmNyZXQ="),
            Some(("ops".into(), "s3:cret".into()))
        );
        assert_eq!(
            basic("basic b3BzOnMzOmNyZXQ=").map(|c| c.0),
            Some("ops".into())
        );
        assert_eq!(basic("Bearer b3BzOnMzOmNyZXQ="), None);
        assert_eq!(basic("Basic !!!"), None);
        assert_eq!(basic("Basic b3Bz"), None, "no colon");
        assert_eq!(basic("Basic"), None);
    }
}
