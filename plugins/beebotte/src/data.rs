//! Data: `publish` (transient) and `write` (also kept, see `records`) of one record or a
//! bulk, and `read`. A channel/resource pair is the MQTT topic `channel/resource` of the
//! account's tenant, so MQTT, socket.io and REST clients all meet there. Apiary has no
//! channel registry: writes to channels nobody declared are accepted.

use apiary_plugin_sdk::http::{Request, Response};
use apiary_plugin_sdk::{broker, clock};
use serde::Deserialize;
use serde_json::Value;

use crate::account::Account;
use crate::rest::{bad_parameter, error, host_error, not_allowed};
use crate::wire::{self, valid_channel, valid_resource};
use crate::{records, RECORDS_PER_RESOURCE};

/// One record of a request body.
#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    resource: Option<String>,
    data: Option<Value>,
    #[serde(default)]
    ts: Option<Value>,
}

#[derive(Deserialize)]
struct Bulk {
    records: Vec<Record>,
}

/// Most records in one bulk request.
const MAX_BULK: usize = 1000;

fn check_names(acc: &Account, channel: &str, resource: &str) -> Result<(), Response> {
    if !valid_channel(channel) || !valid_resource(resource) {
        return Err(bad_parameter(
            "channel and resource are 1 to 64 of A-Z a-z 0-9 _ -",
        ));
    }
    if !acc.may_write(channel) {
        return Err(not_allowed(format!("no write access to channel {channel}")));
    }
    Ok(())
}

/// Publishes (and with `write`, keeps) one record.
fn put(
    acc: &Account,
    write: bool,
    channel: &str,
    resource: &str,
    rec: Record,
) -> Result<(), Response> {
    let Some(data) = rec.data else {
        return Err(bad_parameter("data is required"));
    };
    let ts = rec
        .ts
        .and_then(|t| t.as_i64())
        .unwrap_or_else(clock::now_ms);
    if write {
        records::write(&acc.tenant, channel, resource, &data, ts).map_err(host_error)?;
    }
    let msg = wire::message(channel, resource, data, ts, write).to_string();
    broker::publish(
        &acc.tenant,
        &wire::topic(channel, resource),
        msg.as_bytes(),
        0,
        false,
    )
    .map_err(host_error)?;
    Ok(())
}

/// `POST /v1/data/{publish|write}/{channel}/{resource}`: answers `true`.
pub fn one(acc: &Account, write: bool, channel: &str, resource: &str, req: &Request) -> Response {
    if let Err(r) = check_names(acc, channel, resource) {
        return r;
    }
    let rec: Record = match serde_json::from_slice(&req.body) {
        Ok(r) => r,
        Err(e) => return bad_parameter(format!("body: {e}")),
    };
    match put(acc, write, channel, resource, rec) {
        Ok(()) => Response::json(200, &true),
        Err(r) => r,
    }
}

/// `POST /v1/data/{publish|write}/{channel}` with `{"records":[{resource, data}]}`:
/// publish answers `true`, write an array with one `true` per record.
pub fn bulk(acc: &Account, write: bool, channel: &str, req: &Request) -> Response {
    let b: Bulk = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return bad_parameter(format!("body: {e}")),
    };
    if b.records.len() > MAX_BULK {
        return error(400, 1406, format!("at most {MAX_BULK} records per request"));
    }
    // Every record is checked before any is sent: a bad one fails the whole request.
    for r in &b.records {
        let res = r.resource.as_deref().unwrap_or("");
        if let Err(resp) = check_names(acc, channel, res) {
            return resp;
        }
        if r.data.is_none() {
            return bad_parameter("every record needs data");
        }
    }
    let n = b.records.len();
    for r in b.records {
        let res = r.resource.clone().unwrap_or_default();
        if let Err(resp) = put(acc, write, channel, &res, r) {
            return resp;
        }
    }
    if write {
        Response::json(200, &vec![true; n])
    } else {
        Response::json(200, &true)
    }
}

/// `GET /v1/data/read/{channel}/{resource}?limit=N`: the newest N written records,
/// oldest first (N defaults to 750 and is at most `records_per_resource`).
pub fn read(acc: &Account, channel: &str, resource: &str, req: &Request) -> Response {
    if !valid_channel(channel) || !valid_resource(resource) {
        return bad_parameter("channel and resource are 1 to 64 of A-Z a-z 0-9 _ -");
    }
    if !acc.may_read(channel) {
        return not_allowed(format!("no read access to channel {channel}"));
    }
    let max = RECORDS_PER_RESOURCE.load(std::sync::atomic::Ordering::Relaxed) as u32;
    let limit = match req.query_params().get("limit") {
        None => 750,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => return bad_parameter("limit must be a positive integer"),
        },
    }
    .min(max);
    match records::read(&acc.tenant, channel, resource, limit) {
        Ok(v) => Response::json(200, &v),
        Err(e) => host_error(e),
    }
}
