//! Query parameters: paging (both spellings) and the `GET /clients` filters.

use std::collections::HashMap;

use apiary_plugin_sdk::http::HttpError;
use apiary_plugin_sdk::{registry, session_filter};

use crate::time::parse_filter_time;

/// Largest `limit` EMQX accepts.
pub const MAX_LIMIT: u32 = 10_000;

fn invalid(m: impl Into<String>) -> HttpError {
    HttpError::bad_request(m)
}

/// A query parameter, under either of its spellings.
fn get<'a>(q: &'a HashMap<String, String>, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| q.get(*n)).map(String::as_str)
}

fn int<T: std::str::FromStr>(
    q: &HashMap<String, String>,
    names: &[&str],
) -> Result<Option<T>, HttpError> {
    get(q, names)
        .map(|v| {
            v.parse()
                .map_err(|_| invalid(format!("{} must be an integer, got {v:?}", names[0])))
        })
        .transpose()
}

fn boolean(q: &HashMap<String, String>, name: &str) -> Result<Option<bool>, HttpError> {
    match q.get(name).map(String::as_str) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(v) => Err(invalid(format!("{name} must be true or false, got {v:?}"))),
    }
}

/// `page`/`_page` and `limit`/`_limit`: defaults 1 and 100; 0 or over 10000 is an error.
pub fn paging(q: &HashMap<String, String>) -> Result<(u32, u32), HttpError> {
    let page = int::<u32>(q, &["page", "_page"])?.unwrap_or(1);
    let limit = int::<u32>(q, &["limit", "_limit"])?.unwrap_or(100);
    if page == 0 {
        return Err(invalid("page must be at least 1"));
    }
    if limit == 0 || limit > MAX_LIMIT {
        return Err(invalid(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    Ok((page, limit))
}

/// The registry filter for `GET /clients`; None when a filter can match nothing here
/// (another zone, `conn_state=idle`, a protocol Apiary does not speak).
pub fn client_filter(
    q: &HashMap<String, String>,
    tenant: &str,
) -> Result<Option<registry::SessionFilter>, HttpError> {
    let mut f = session_filter();
    f.tenant = Some(tenant.to_string());
    f.client_id = q.get("clientid").cloned();
    f.username = q.get("username").cloned();
    f.ip_address = q.get("ip_address").cloned();
    f.like_client_id = q.get("like_clientid").cloned();
    f.like_username = q.get("like_username").cloned();
    f.clean_start = boolean(q, "clean_start")?;
    f.proto_ver = int(q, &["proto_ver"])?;
    let mut impossible = false;
    if let Some(z) = q.get("zone") {
        impossible |= z != "default";
    }
    match q.get("conn_state").map(String::as_str) {
        None => {}
        Some("connected") => f.connected = Some(true),
        Some("disconnected") => f.connected = Some(false),
        Some("idle") => impossible = true,
        Some(v) => {
            return Err(invalid(format!(
                "conn_state must be connected, idle or disconnected, got {v:?}"
            )))
        }
    }
    match q.get("proto_name").map(String::as_str) {
        None => {}
        Some("MQTT") => f.proto_name = Some("MQTT".into()),
        Some("MQIsdp") => f.proto_name = Some("MQIsdp".into()),
        // Apiary's stream connections (Octave's WebSocket streams, Beebotte's socket.io).
        Some(p @ ("websocket" | "socketio")) => f.proto_name = Some(p.into()),
        Some("CoAP" | "MQTT-SN" | "LwM2M" | "STOMP" | "GB/T 32960") => impossible = true,
        Some(v) => return Err(invalid(format!("unknown proto_name {v:?}"))),
    }
    let time = |names: &[&str]| -> Result<Option<i64>, HttpError> {
        get(q, names)
            .map(|v| {
                parse_filter_time(v).ok_or_else(|| {
                    invalid(format!(
                        "{} must be epoch seconds or RFC 3339, got {v:?}",
                        names[0]
                    ))
                })
            })
            .transpose()
    };
    f.created_from = time(&["gte_created_at", "_gte_created_at"])?;
    f.created_to = time(&["lte_created_at", "_lte_created_at"])?;
    f.connected_from = time(&["gte_connected_at", "_gte_connected_at"])?;
    f.connected_to = time(&["lte_connected_at", "_lte_connected_at"])?;
    Ok((!impossible).then_some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn paging_spellings_defaults_and_bounds() {
        assert_eq!(paging(&q(&[])).unwrap(), (1, 100));
        assert_eq!(
            paging(&q(&[("_page", "3"), ("_limit", "50")])).unwrap(),
            (3, 50)
        );
        assert_eq!(
            paging(&q(&[("page", "2"), ("limit", "10000")])).unwrap(),
            (2, 10_000)
        );
        for bad in [
            ("limit", "10001"),
            ("limit", "0"),
            ("page", "0"),
            ("page", "x"),
            ("limit", "-1"),
        ] {
            assert_eq!(paging(&q(&[bad])).unwrap_err().status, 400, "{bad:?}");
        }
    }

    #[test]
    fn filters() {
        let f = client_filter(
            &q(&[
                ("conn_state", "connected"),
                ("proto_ver", "5"),
                ("clean_start", "false"),
                ("_gte_created_at", "1694770580"),
                ("lte_connected_at", "2023-09-15T09:36:20.871Z"),
            ]),
            "t",
        )
        .unwrap()
        .unwrap();
        assert_eq!(f.connected, Some(true));
        assert_eq!(f.proto_ver, Some(5));
        assert_eq!(f.clean_start, Some(false));
        assert_eq!(f.created_from, Some(1_694_770_580_000));
        assert_eq!(f.connected_to, Some(1_694_770_580_871));
        assert!(client_filter(&q(&[("zone", "other")]), "t")
            .unwrap()
            .is_none());
        assert!(client_filter(&q(&[("conn_state", "idle")]), "t")
            .unwrap()
            .is_none());
        assert!(client_filter(&q(&[("proto_name", "CoAP")]), "t")
            .unwrap()
            .is_none());
        let f = client_filter(&q(&[("proto_name", "websocket")]), "t")
            .unwrap()
            .unwrap();
        assert_eq!(f.proto_name.as_deref(), Some("websocket"));
        for bad in [
            ("conn_state", "asleep"),
            ("clean_start", "yes"),
            ("proto_ver", "five"),
            ("gte_created_at", "soon"),
            ("proto_name", "HTTP"),
        ] {
            assert_eq!(
                client_filter(&q(&[bad]), "t").unwrap_err().status,
                400,
                "{bad:?}"
            );
        }
    }
}
